/** Errors of the OpenADR plugins. They are PluginErrors, so the HTTP API answers them with 400. */
import { PluginError } from '../errors.ts'

export class OpenAdrError extends PluginError {
  override name = 'OpenAdrError'
  constructor(pluginId: string, message: string, options?: ErrorOptions) {
    super(pluginId, message, options)
  }
}

/** The VTN listener could not start (address in use, …). */
export class OpenAdrListenError extends OpenAdrError {
  override name = 'OpenAdrListenError'
  constructor(message: string, options?: ErrorOptions) {
    super('openadr-vtn', message, options)
  }
}

/** A VTN answered the VEN with an error status, or not at all. */
export class VtnRequestError extends OpenAdrError {
  override name = 'VtnRequestError'
  constructor(
    readonly status: number | undefined,
    message: string,
    options?: ErrorOptions & { retryAfterS?: number | undefined },
  ) {
    super('openadr-ven', message, options)
    this.retryAfterS = options?.retryAfterS
  }

  /** Seconds the VTN asked the client to wait (Retry-After on 429/503), if it did. */
  readonly retryAfterS: number | undefined
}

/** Something the VEN was about to send, or received, does not fit the OpenAPI document. */
export class OpenAdrContractError extends OpenAdrError {
  override name = 'OpenAdrContractError'
  constructor(
    pluginId: string,
    readonly errors: string[],
    message: string,
  ) {
    super(pluginId, `${message}: ${errors.join('; ')}`)
  }
}

/** This replica no longer follows the VTN (its lease went): the step was not taken. */
export class VenStandbyError extends OpenAdrError {
  override name = 'VenStandbyError'
  constructor(message = 'this replica no longer holds the VEN lease', options?: ErrorOptions) {
    super('openadr-ven', message, options)
  }
}

/**
 * Another replica of the node changed the same VTN object (or name) at the same moment, and this
 * change still lost after a few tries from the newest version: nothing was written. The VTN
 * answers 409 where the operation lists it.
 */
export class VtnConflictError extends OpenAdrError {
  override name = 'VtnConflictError'
  constructor(
    readonly key: string,
    message = `another replica changed '${key}' at the same time: try again`,
    options?: ErrorOptions,
  ) {
    super('openadr-vtn', message, options)
  }
}

/**
 * A name that must be unique (a program's, a ven's, a VEN client's one ven, a ven's resource's)
 * is held by another object, made through this replica or another: nothing was written. The VTN
 * answers 409 where the operation lists it.
 */
export class VtnNameTakenError extends OpenAdrError {
  override name = 'VtnNameTakenError'
  constructor(
    readonly key: string,
    message = `the name '${key}' is taken`,
    options?: ErrorOptions,
  ) {
    super('openadr-vtn', message, options)
  }
}

/** Errors of the OCPI plugin. They are PluginErrors, so the node's HTTP API answers them with 400. */
import { PluginError } from '../errors.ts'

export class OcpiError extends PluginError {
  override name = 'OcpiError'
  constructor(message: string, options?: ErrorOptions) {
    super('ocpi', message, options)
  }
}

/** The OCPI listener could not start (address in use, …). */
export class OcpiListenError extends OcpiError {
  override name = 'OcpiListenError'
}

/** An operator action's input does not fit. */
export class OcpiActionInputError extends OcpiError {
  override name = 'OcpiActionInputError'
}

/** No partner by that name, or not in the state the action needs. */
export class UnknownPartnerError extends OcpiError {
  override name = 'UnknownPartnerError'
  constructor(readonly partner: string) {
    super(`no OCPI partner '${partner}'`)
  }
}

/**
 * A partner's server answered with an HTTP error, an OCPI error status, or something that is
 * not an OCPI response, or did not answer in time.
 */
export class OcpiRequestError extends OcpiError {
  override name = 'OcpiRequestError'
  constructor(
    readonly url: string,
    readonly httpStatus: number | undefined,
    readonly ocpiStatus: number | undefined,
    message: string,
    options?: ErrorOptions,
  ) {
    super(`${url}: ${message}`, options)
  }
}

/** Registration failed: no common version, missing endpoints, or the exchange was refused. */
export class OcpiRegistrationError extends OcpiError {
  override name = 'OcpiRegistrationError'
  constructor(
    message: string,
    /** The OCPI status to answer a partner's POST/PUT credentials with (3001, 3002, 3003). */
    readonly ocpiStatus = 3001,
    options?: ErrorOptions,
  ) {
    super(message, options)
  }
}

/** Errors of the OCPP plugin. They are PluginErrors, so the HTTP API answers them with 400. */
import { PluginError } from '../errors.ts'

export class OcppError extends PluginError {
  override name = 'OcppError'
  constructor(message: string, options?: ErrorOptions) {
    super('ocpp', message, options)
  }
}

/** An action or command names a station that is not connected. */
export class StationNotConnectedError extends OcppError {
  override name = 'StationNotConnectedError'
  constructor(readonly station: string) {
    super(`station '${station}' is not connected`)
  }
}

/** An operator action's input does not fit. */
export class OcppActionInputError extends OcppError {
  override name = 'OcppActionInputError'
}

/** The station answered a call with a CALLERROR, or did not answer in time. */
export class StationCallError extends OcppError {
  override name = 'StationCallError'
  constructor(
    readonly station: string,
    readonly action: string,
    readonly code: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(`station '${station}' ${action}: ${code}: ${message}`, options)
  }
}

/** The listener could not start (address in use, unreadable certificate, …). */
export class OcppListenError extends OcppError {
  override name = 'OcppListenError'
}

/** Errors of the CSIP-AUS plugin. They are PluginErrors, so they name the plugin. */
import { PluginError } from '../errors.ts'

export class CsipError extends PluginError {
  override name = 'CsipError'
  constructor(message: string, options?: ErrorOptions) {
    super('csip-aus', message, options)
  }
}

/** A certificate or key cannot be read or is not what 2030.5 needs. */
export class CsipCertificateError extends CsipError {
  override name = 'CsipCertificateError'
}

/** The utility server could not be reached, refused TLS, or answered with an HTTP error. */
export class CsipTransportError extends CsipError {
  override name = 'CsipTransportError'
  constructor(
    message: string,
    readonly status?: number,
    options?: ErrorOptions,
  ) {
    super(message, options)
  }
}

/** A body is not acceptable 2030.5 XML: malformed, too large, or with a DOCTYPE / entities. */
export class CsipXmlError extends CsipError {
  override name = 'CsipXmlError'
}

/** The server's Registration PIN does not match the configured one: the client stops for that site. */
export class CsipRegistrationError extends CsipError {
  override name = 'CsipRegistrationError'
}

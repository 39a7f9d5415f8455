/** Errors raised by the data plane. Tests and edges match on `name`. */

export class DataPlaneError extends Error {
  override name = 'DataPlaneError'
}

/** A record or resource failed validation; `path` names the field at fault. */
export class ValidationError extends DataPlaneError {
  override name = 'ValidationError'
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(path === '' ? reason : `${path}: ${reason}`)
  }
}

/** A payload could not be decoded (bad CBOR, JSON or NDJSON). */
export class DecodeError extends DataPlaneError {
  override name = 'DecodeError'
  constructor(message = 'payload could not be decoded', options?: ErrorOptions) {
    super(message, options)
  }
}

/** No usable nats-server executable was found. */
export class NatsServerNotFoundError extends DataPlaneError {
  override name = 'NatsServerNotFoundError'
  constructor(
    message = 'nats-server >= 2.10 was not found: install it (as root, `bash scripts/setup` does it on Debian) ' +
      'or run against an existing NATS with --nats-url nats://HOST:4222',
  ) {
    super(message)
  }
}

/** The nats-server is older than the data plane needs. */
export class NatsServerVersionError extends DataPlaneError {
  override name = 'NatsServerVersionError'
  constructor(readonly version: string) {
    super(
      `nats-server ${version} is too old: oe-node needs >= 2.10 (consumers with several filter subjects); ` +
        'install a newer nats-server or pass --nats-url to one',
    )
  }
}

/** The embedded nats-server did not become ready or failed to start. */
export class NatsServerStartError extends DataPlaneError {
  override name = 'NatsServerStartError'
}

/** The data plane is not connected. */
export class NotConnectedError extends DataPlaneError {
  override name = 'NotConnectedError'
  constructor(message = 'the data plane is not connected to NATS') {
    super(message)
  }
}

/** JetStream refused to store a message. */
export class PublishError extends DataPlaneError {
  override name = 'PublishError'
}

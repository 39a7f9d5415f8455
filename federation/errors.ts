/** Errors of the federation. Tests and edges match on `name`. */

export class FederationError extends Error {
  override name = 'FederationError'
}

/** An agreement, grant or message does not have the required shape; `path` names the field. */
export class AgreementFormatError extends FederationError {
  override name = 'AgreementFormatError'
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(path === '' ? reason : `${path}: ${reason}`)
  }
}

/** A signature does not verify against the key it claims. */
export class BadSignatureError extends FederationError {
  override name = 'BadSignatureError'
}

/** The agreement names neither party as this node, or not the peer it came from. */
export class ForeignAgreementError extends FederationError {
  override name = 'ForeignAgreementError'
}

/** The agreement's validity window has ended. */
export class AgreementExpiredError extends FederationError {
  override name = 'AgreementExpiredError'
}

/** The action does not fit the agreement's state (e.g. accepting a revoked one). */
export class AgreementStateError extends FederationError {
  override name = 'AgreementStateError'
}

export class AgreementNotFoundError extends FederationError {
  override name = 'AgreementNotFoundError'
  constructor(readonly id: string) {
    super(`no agreement ${id}`)
  }
}

/** No peer with that alias or key is in the directory. */
export class UnknownPeerError extends FederationError {
  override name = 'UnknownPeerError'
}

/** A peer with that alias or key is already in the directory. */
export class PeerExistsError extends FederationError {
  override name = 'PeerExistsError'
}

/** A protocol frame is malformed, truncated or too large. */
export class FrameError extends FederationError {
  override name = 'FrameError'
}

/** The peer answered a protocol message with an error. */
export class PeerRefusedError extends FederationError {
  override name = 'PeerRefusedError'
  constructor(
    readonly remoteName: string,
    message: string,
  ) {
    super(message)
  }
}

/** Another replica of this node runs the transfer session asked for; the peer may try again. */
export class TransferBusyError extends FederationError {
  override name = 'TransferBusyError'
}

/**
 * A key succession statement ("org X's key old → new from time T") was refused. The subclasses
 * say why; nothing changed when one is thrown.
 */
export class KeySuccessionError extends FederationError {
  override name = 'KeySuccessionError'
}

/** A succession statement's signature by the old key or by the new key does not verify. */
export class SuccessionSignatureError extends KeySuccessionError {
  override name = 'SuccessionSignatureError'
}

/** A succession statement's old key is the key of no peer of this node. */
export class SuccessionUnknownPeerError extends KeySuccessionError {
  override name = 'SuccessionUnknownPeerError'
}

/**
 * A succession statement's old key is not the current key of the peer it came from (a key it
 * already replaced, another peer's key, or a second successor for a key already succeeded).
 */
export class SuccessionKeyMismatchError extends KeySuccessionError {
  override name = 'SuccessionKeyMismatchError'
}

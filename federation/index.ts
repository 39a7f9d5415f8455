/**
 * federation: the libp2p host, peer directory and connection gating, sharing agreements
 * (model, canonical encoding, signatures, lifecycle, store), the agreement protocol, key
 * succession (a peer's or this node's key rotation) and the audit log (ARCHITECTURE §6, §7). It
 * imports only `data-plane/`.
 *
 * @example
 * const audit = new AuditLog({ dir: paths.audit }, { signer })
 * const federation = new Federation({ org, listen }, { dataPlane, signer, logger, audit })
 * await audit.start(); await federation.start()
 * await federation.addPeer({ alias: 'gridco', org, peerId, publicKey, addrs })
 * const { id } = await federation.propose({ peer: 'gridco', grants: [parseGrantSpec(spec)], purpose, validUntil })
 */
export * from './agreement.ts'
export {
  type AuditEntry,
  AuditError,
  AuditLog,
  type AuditLogInit,
  type AuditSigner,
  type AuditVerifyResult,
  KEY_ROTATED_TYPE,
  verifyAuditLog,
} from './audit.ts'
export { encodeCanonical } from './canonical-cbor.ts'
export * from './errors.ts'
export {
  type AgreementDetail,
  type AgreementSummary,
  ALIAS_PATTERN,
  Federation,
  type FederationComponents,
  type FederationInit,
  type FederationSigner,
  type PeerView,
  type ProposeInput,
} from './federation.ts'
export { consumerLeaseName, providerLeaseName } from './flows.ts'
export { decodeFramePayload, encodeFrame, FrameDecoder, MAX_FRAME_BYTES } from './frames.ts'
export { describeGrant, parseGrantSpec } from './grant-spec.ts'
export { AGREEMENT_PROTOCOL, type AgreementMessage, parseAgreementMessage } from './messages.ts'
export {
  type NoiseCrypto,
  type NoiseCryptoChoice,
  NoiseCryptoUnavailableError,
  noiseCrypto,
} from './noise-crypto.ts'
export {
  REPLICAS_BUCKET,
  ReplicaDirectory,
  type ReplicaDirectoryComponents,
  type ReplicaDirectoryInit,
  type ReplicaView,
} from './replicas.ts'
export { readOwnSuccessions, TRANSFER_BUCKET } from './stores.ts'
export {
  DEFAULT_GRACE_MS,
  type KeySuccession,
  MAX_GRACE_MS,
  parseSuccession,
  peerIdOfKey,
  signSuccession,
  successionBytes,
} from './succession.ts'
export { emptyStats, type FlowStats, type TransferState } from './transfer.ts'

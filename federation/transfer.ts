/**
 * Agreement-governed data transfer (`/oe/transfer/1.0.0`), one stream per active agreement,
 * opened by the provider.
 *
 *   provider → consumer   {t:'hello', id}
 *   consumer → provider   {t:'ready', hw:{tel,std,evt}, credit}      what it already holds
 *   provider → consumer   {t:'batch', body, sig}                      body = CBOR {id,n,a,upTo,r}
 *   consumer → provider   {t:'ack', n, credit}
 *
 * The provider reads its streams through one durable consumer per agreement and stream,
 * (re)created at each session from the consumer's high-water mark, so a session resumes exactly
 * where the consumer's data ends. It filters, projects and rate-limits per the compiled scope,
 * signs each batch (ed25519 over SHA-256 of the body) and sends only while it holds credit. The
 * consumer verifies the signature and the agreement, re-checks every record, publishes accepted
 * ones to `oe.peer.<alias>.…` with an `Oe-Src` header (agreement, stream, source sequence), stores
 * its high-water mark, and only then acknowledges. After a crash it finds anything published but
 * not yet recorded by reading those headers back, so nothing is published twice.
 *
 * This module holds what both sides share. The sides are `provider-session.ts` (the provider's
 * hot path: JetStream → scope → signed batches) and `consumer-session.ts` (verify, re-check,
 * publish, store the mark, acknowledge), over the framed channel of `transfer-channel.ts`.
 */
import { createPublicKey, type KeyObject } from 'node:crypto'
import { type AgreementDocument, agreementState, keyBytes, type Termination } from './agreement.ts'
import type { DropReason, SourceArea } from './scope.ts'

export const TRANSFER_PROTOCOL = '/oe/transfer/1.0.0'
export const MAX_BATCH_FRAME_BYTES = 1024 * 1024
export const SOURCE_HEADER = 'Oe-Src'

export interface TransferTuning {
  /** Records per batch at most. */
  maxBatchRecords: number
  /**
   * How long a batch may wait for more records after its first, unless it fills first. 0: send
   * what has arrived at once (batches still grow with the load, as records queue while one goes).
   */
  batchWaitMs: number
  /** Batches a consumer lets the provider have in flight. */
  credit: number
}

export const DEFAULT_TUNING: TransferTuning = { maxBatchRecords: 500, batchWaitMs: 5, credit: 8 }

export type HighWater = Record<SourceArea, number>

/** Why a consumer refused a record, besides the scope's reasons. */
export type ConsumerDropReason = 'replayed' | 'after_cutoff'

/** What a violation carries to the audit log besides its reason. */
export interface ViolationDetails {
  batch: number
  counts: Record<string, number>
}

/** What the consumer keeps per agreement in KV `oe-transfer`. */
export interface TransferState {
  hw: HighWater
  /** OE_PEER sequence of the last batch recorded in `hw`; the recovery scan starts after it. */
  peerSeq: number
}

export interface FlowStats {
  recordsIn: number
  bytesIn: number
  recordsOut: number
  bytesOut: number
  batchesIn: number
  batchesOut: number
  /**
   * Provider: records it read and did not send, by reason. Consumer: records in batches it
   * refused (each refusal also cut the session), by reason.
   */
  drops: Partial<Record<DropReason | ConsumerDropReason, number>>
  lastBatchAt: number | null
  /** Provider: records read but not yet acknowledged by the consumer. */
  lagRecords: number
  sessions: number
  /**
   * Consumer: records that session starts since the node started found in OE_PEER beyond the
   * stored high-water mark (their `Oe-Src` headers raised it; 0 while the mark was current).
   */
  recoveredRecords: number
  lastError: string | null
}

export const emptyStats = (): FlowStats => ({
  recordsIn: 0,
  bytesIn: 0,
  recordsOut: 0,
  bytesOut: 0,
  batchesIn: 0,
  batchesOut: 0,
  drops: {},
  lastBatchAt: null,
  lagRecords: 0,
  sessions: 0,
  recoveredRecords: 0,
  lastError: null,
})

export interface AgreementView {
  id: string
  doc: AgreementDocument
  rejection?: Termination
  revocation?: Termination
  /** The consumer's alias for the provider (the `<alias>` in `oe.peer.<alias>.…`). */
  peer: string
}

const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex')

export function publicKeyObject(key: string): KeyObject {
  return createPublicKey({
    key: Buffer.concat([SPKI_ED25519_PREFIX, keyBytes(key)]),
    format: 'der',
    type: 'spki',
  })
}

/**
 * The raw ed25519 key (base64url) a connection is authenticated with. What a peer signs on the
 * connection is checked against it: after a key rotation that is the peer's new key, not the one
 * its agreements name (the peer directory tied the two together by a verified succession).
 */
export function remoteKey(remotePeer: unknown): string | undefined {
  const key = (remotePeer as { publicKey?: { type?: string; raw?: Uint8Array } }).publicKey
  return key?.type === 'Ed25519' && key.raw ? Buffer.from(key.raw).toString('base64url') : undefined
}

/** When data stops counting: revocation time or the end of the validity window. */
export function cutoff(view: AgreementView): number {
  return Math.min(view.revocation?.at ?? Number.POSITIVE_INFINITY, view.doc.body.validUntil)
}

export function isActive(view: AgreementView, now = Date.now()): boolean {
  return agreementState(view.doc, view, now) === 'active'
}

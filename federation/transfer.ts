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
 */
import {
  createHash,
  createPublicKey,
  sign as cryptoSign,
  verify as cryptoVerify,
  type KeyObject,
} from 'node:crypto'
import type { Stream } from '@libp2p/interface'
import { AckPolicy, DeliverPolicy, type JsMsg } from '@nats-io/jetstream'
import { nanos } from '@nats-io/nats-core'
import {
  closeConsumerMessages,
  type DataPlane,
  decodeCbor,
  encodeCbor,
  FixedHeader,
  type Logger,
  type OutgoingMessage,
  type Resource,
} from '../data-plane/index.ts'
import { type AgreementDocument, agreementState, keyBytes, type Termination } from './agreement.ts'
import {
  decodeBatchBody,
  encodeBatchFrame,
  recordCapacity,
  streamSequence,
  telemetryTime,
} from './batch-codec.ts'
import { decodeFederationCbor } from './canonical-cbor.ts'
import { FederationError, FrameError } from './errors.ts'
import { decodeFramePayload, FrameDecoder, writeFrame } from './frames.ts'
import {
  AREA_STREAM,
  type CompiledScope,
  compileScope,
  type DropReason,
  IntervalGate,
  minInterval,
  projectResource,
  SOURCE_AREAS,
  type SourceArea,
  withinProjection,
} from './scope.ts'
import type { RecordBucket } from './stores.ts'

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

const describeCounts = (counts: Record<string, number>): string =>
  Object.entries(counts)
    .map(([reason, count]) => `${reason} ${count}`)
    .join(', ')

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

/** When data stops counting: revocation time or the end of the validity window. */
export function cutoff(view: AgreementView): number {
  return Math.min(view.revocation?.at ?? Number.POSITIVE_INFINITY, view.doc.body.validUntil)
}

function isActive(view: AgreementView, now = Date.now()): boolean {
  return agreementState(view.doc, view, now) === 'active'
}

/** Frames on a bidirectional stream: an async reader and a writer honouring back-pressure. */
class Channel {
  private readonly decoder: FrameDecoder
  private readonly queue: unknown[] = []
  private waiting: ((value: unknown) => void) | undefined
  private failed: Error | undefined
  private ended = false
  /** Frames that may wait unread; more is a peer sending without credit. */
  private queueLimit = Number.POSITIVE_INFINITY

  constructor(
    readonly stream: Stream,
    maxBytes: number,
  ) {
    this.decoder = new FrameDecoder(maxBytes)
    void this.pump()
  }

  private async pump(): Promise<void> {
    try {
      for await (const chunk of this.stream) {
        this.decoder.push(chunk instanceof Uint8Array ? chunk : chunk.subarray())
        for (let payload = this.decoder.take(); payload !== undefined; payload = this.decoder.take()) {
          this.deliver(decodeFramePayload(payload))
        }
      }
      this.ended = true
    } catch (error) {
      // A broken or flooding stream: nothing queued from it is processed any more.
      this.failed = error as Error
      this.queue.length = 0
      this.abort(this.failed)
    }
    this.deliver(undefined)
  }

  /** Why the incoming side failed (bad framing, flooding), if it did. */
  get failure(): Error | undefined {
    return this.failed
  }

  /** Bound what may wait unread: with credit-based flow control no more can legitimately arrive. */
  limitQueue(frames: number): void {
    this.queueLimit = frames
  }

  private deliver(value: unknown): void {
    if (this.waiting) {
      const resolve = this.waiting
      this.waiting = undefined
      resolve(value)
    } else if (value !== undefined) {
      if (this.queue.length >= this.queueLimit) {
        throw new FrameError(
          `more than ${this.queueLimit} frames arrived unacknowledged: sent without credit (flooding)`,
        )
      }
      this.queue.push(value)
    }
  }

  /** The next frame; undefined when the stream ended. Throws FrameError on bad framing. */
  async next(): Promise<unknown> {
    if (this.queue.length > 0) return this.queue.shift()
    if (this.failed) throw this.failed
    if (this.ended) return undefined
    const value = await new Promise<unknown>((resolve) => {
      this.waiting = resolve
    })
    if (value === undefined && this.failed) throw this.failed
    return value
  }

  send(message: unknown): Promise<void> {
    return writeFrame(this.stream, message)
  }

  async sendEncoded(frame: Uint8Array): Promise<void> {
    if (!this.stream.send(frame)) await this.stream.onDrain()
  }

  abort(reason: Error): void {
    if (this.stream.status === 'open') this.stream.abort(reason)
  }
}

/** How long the provider waits for a message before it asks whether its consumer stalled. */
const STALL_CHECK_MS = 5_000
/** Room kept in a batch frame for everything but the records (keys, id, numbers, signature). */
const BATCH_FRAME_SLACK = 1_024

/** JetStream's redelivery timer for the provider's consumers: far beyond any session. */
const ACK_WAIT_MS = 24 * 3_600_000

/** Messages per JetStream pull request. */
const pullSize = (tuning: TransferTuning): number => tuning.maxBatchRecords * 2

/** JetStream messages as nats.js delivers them, taken a batch at a time. */
class Inbox {
  private items: JsMsg[] = []
  private waiter: (() => void) | undefined
  private wanted = 1
  ended = false

  readonly push = (msg: JsMsg): void => {
    this.items.push(msg)
    if (this.items.length >= this.wanted) this.wake()
  }

  get size(): number {
    return this.items.length
  }

  end(): void {
    this.ended = true
    this.wake()
  }

  /** Resolves once `count` messages are here, the inbox has ended, or `ms` have passed. */
  wait(count: number, ms: number): Promise<void> {
    if (this.items.length >= count || this.ended) return Promise.resolve()
    this.wanted = count
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiter = undefined
        resolve()
      }, ms)
      this.waiter = () => {
        clearTimeout(timer)
        resolve()
      }
    })
  }

  take(max: number): JsMsg[] {
    return this.items.splice(0, max)
  }

  private wake(): void {
    const waiter = this.waiter
    this.waiter = undefined
    this.wanted = 1
    waiter?.()
  }
}

// ── provider ─────────────────────────────────────────────────────────────────────────────────

export interface ProviderSessionComponents {
  dataPlane: DataPlane
  logger: Logger
  privateKey: KeyObject
  siteOf: (kind: string, rid: string) => string | undefined
  stats: FlowStats
  tuning: TransferTuning
}

interface PendingBatch {
  n: number
  area: SourceArea
  last: JsMsg
  records: number
}

/** One provider-side transfer session for one agreement over one stream. */
export class ProviderSession {
  private readonly scope: CompiledScope
  private readonly gate = new IntervalGate()
  private readonly abort = new AbortController()
  private readonly inFlight = new Map<number, PendingBatch>()
  private credit = 0
  /** The credit the consumer granted at the start of the session: batches it lets be in flight. */
  private grantedCredit = 1
  /** Per stream, the highest source sequence taken for sending (a redelivery is at or below). */
  private readonly taken: Record<SourceArea, number> = { tel: 0, std: 0, evt: 0 }
  private creditWaiters: (() => void)[] = []
  private batchNumber = 0
  private closedReason: string | undefined
  private readonly closing: Promise<void>[] = []
  /** limits.maxRecordsPerSec: a token bucket holding at most one second of records. */
  private tokens = 0
  private tokensAt = Date.now()

  constructor(
    private readonly view: AgreementView,
    private readonly channel: Channel,
    private readonly components: ProviderSessionComponents,
  ) {
    this.scope = compileScope(view.doc.body)
  }

  static async open(
    view: AgreementView,
    stream: Stream,
    components: ProviderSessionComponents,
  ): Promise<ProviderSession> {
    const channel = new Channel(stream, 64 * 1024)
    return new ProviderSession(view, channel, components)
  }

  get closed(): boolean {
    return this.closedReason !== undefined
  }

  /** Run until the stream ends, the agreement ends, or `stop()`. */
  async run(): Promise<void> {
    const { stats } = this.components
    stats.sessions += 1
    try {
      await this.channel.send({ t: 'hello', id: this.view.id })
      const ready = (await this.channel.next()) as {
        t?: string
        hw?: Partial<HighWater>
        credit?: number
        message?: string
      }
      if (ready?.t === 'error')
        throw new FederationError(`the consumer refused the session: ${ready.message}`)
      if (ready?.t !== 'ready' || typeof ready.credit !== 'number')
        throw new FrameError('expected a ready frame')
      this.credit = Math.min(Math.max(0, Math.trunc(ready.credit)), 256)
      this.grantedCredit = Math.max(1, this.credit)
      const hw = ready.hw ?? {}
      const readers = this.scope.areas.map((area) => this.readArea(area, Number(hw[area] ?? 0)))
      await Promise.race([Promise.all(readers), this.readAcks()])
    } catch (error) {
      if (!this.closed) {
        stats.lastError = (error as Error).message
        this.components.logger.warn(
          { id: this.view.id, err: (error as Error).message },
          'transfer session ended',
        )
      }
    } finally {
      this.stop('session ended')
      await Promise.allSettled(this.closing)
    }
  }

  stop(reason: string): void {
    if (this.closedReason) return
    this.closedReason = reason
    // Batches still in flight are read again by the next session: no longer this one's lag.
    const { stats } = this.components
    for (const batch of this.inFlight.values())
      stats.lagRecords = Math.max(0, stats.lagRecords - batch.records)
    this.inFlight.clear()
    this.abort.abort(new FederationError(reason))
    for (const wake of this.creditWaiters.splice(0)) wake()
    this.channel.abort(new FederationError(reason))
  }

  private async readAcks(): Promise<void> {
    while (!this.closed) {
      const frame = (await this.channel.next()) as { t?: string; n?: number; credit?: number } | undefined
      if (frame === undefined) throw new FederationError('the consumer closed the session')
      if (frame.t !== 'ack' || typeof frame.n !== 'number') continue
      const batch = this.inFlight.get(frame.n)
      if (batch) {
        this.inFlight.delete(frame.n)
        // The consumer holds it: now, and only now, JetStream may forget it.
        batch.last.ack()
        this.components.stats.lagRecords = Math.max(0, this.components.stats.lagRecords - batch.records)
      }
      this.credit = Math.min(this.credit + Math.max(0, Math.trunc(frame.credit ?? 1)), 256)
      for (const wake of this.creditWaiters.splice(0)) wake()
    }
  }

  private async waitCredit(): Promise<void> {
    while (this.credit <= 0 && !this.closed) {
      await new Promise<void>((resolve) => this.creditWaiters.push(resolve))
    }
  }

  /** Hold back until `count` records fit the agreement's rate limit, if it has one. */
  private async throttle(count: number): Promise<void> {
    const rate = this.view.doc.body.limits?.maxRecordsPerSec
    if (!rate || count === 0) return
    for (;;) {
      const now = Date.now()
      this.tokens = Math.min(rate, this.tokens + ((now - this.tokensAt) * rate) / 1000)
      this.tokensAt = now
      // A batch larger than a second's worth goes out once the bucket is full, then waits it off.
      if (this.tokens >= Math.min(count, rate) || this.closed) break
      await Bun.sleep(Math.ceil(((Math.min(count, rate) - this.tokens) * 1000) / rate))
    }
    this.tokens -= count
  }

  private durableName(area: SourceArea): string {
    return `oe-agr-${this.view.id.slice(0, 24)}-${area}`
  }

  /** Recreate the durable consumer so delivery starts right after what the consumer holds. */
  private async prepareConsumer(area: SourceArea, hw: number): Promise<string> {
    const { dataPlane, tuning } = this.components
    const jsm = dataPlane.manager
    const stream = AREA_STREAM[area]
    const name = this.durableName(area)
    await jsm.consumers.delete(stream, name).catch(() => {})
    const start =
      hw > 0
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: hw + 1 }
        : area === 'std'
          ? { deliver_policy: DeliverPolicy.LastPerSubject }
          : {
              deliver_policy: DeliverPolicy.StartTime,
              opt_start_time: new Date(this.view.doc.body.validFrom).toISOString(),
            }
    await jsm.consumers.add(stream, {
      durable_name: name,
      // The whole stream, checked record by record here: nats-server 2.10 delivers from a
      // wildcard filter several times slower than from none once the consumer is behind.
      filter_subject: `oe.${area}.>`,
      ack_policy: AckPolicy.All,
      // Each session recreates the consumer from the consumer's high-water mark, so JetStream's
      // own redelivery is never needed: a delivery waits for credit as long as it must.
      ack_wait: nanos(ACK_WAIT_MS),
      // What may be delivered and not yet acked: the batches the consumer lets be in flight,
      // and two pulls more. This bounds what waits in the inbox.
      max_ack_pending: this.grantedCredit * tuning.maxBatchRecords + 2 * pullSize(tuning),
      inactive_threshold: nanos(7 * 86_400_000),
      ...start,
    })
    return name
  }

  private async readArea(area: SourceArea, hw: number): Promise<void> {
    const { dataPlane, tuning } = this.components
    const stream = AREA_STREAM[area]
    const name = await this.prepareConsumer(area, hw)
    const consumer = await dataPlane.jetstream.consumers.get(stream, name)
    // nats.js hands each message to a callback (cheaper than its async iterator); the inbox holds
    // them until they go. JetStream stops delivering at the consumer's max_ack_pending, which
    // bounds the inbox (see prepareConsumer).
    const inbox = new Inbox()
    const messages = await consumer.consume({ max_messages: pullSize(tuning), callback: inbox.push })
    void messages.closed().then(
      () => inbox.end(),
      () => inbox.end(),
    )
    // Closed with the session, also when it ended while the consume was being set up: a consume
    // left open would go on taking messages from the durable consumer the next session recreates.
    const close = (): Promise<void> => {
      inbox.end()
      return closeConsumerMessages(messages)
    }
    if (this.abort.signal.aborted) {
      await close()
      return
    }
    this.closing.push(
      new Promise<void>((resolve) => {
        this.abort.signal.addEventListener('abort', () => void close().finally(resolve), { once: true })
      }),
    )
    while (!this.closed) {
      if (inbox.size === 0) {
        await inbox.wait(1, STALL_CHECK_MS)
        if (this.closed) return
        if (inbox.size === 0) {
          if (inbox.ended) return
          // Quiet for a while: fine, unless the stream has data the consumer is not delivering
          // (it can stall after a server restart); then end the session and start afresh.
          // (Deliveries held back at max_ack_pending count too: with the inbox empty and credit
          // to spare, what is delivered and unacked cannot reach it, unless acks were lost with
          // a restarting server; a new session recreates the consumer from the consumer's mark.)
          const info = await consumer.info().catch(() => undefined)
          if (info && info.num_pending > 0 && !this.closed)
            throw new FederationError('the JetStream consumer stalled')
          continue
        }
      }
      // Whatever has come (a whole socket read's worth arrives at once), or, with a batch wait,
      // up to a full batch within it.
      if (tuning.batchWaitMs > 0) await inbox.wait(tuning.maxBatchRecords, tuning.batchWaitMs)
      await this.sendFitting(area, inbox.take(tuning.maxBatchRecords))
    }
  }

  private prepare(
    area: SourceArea,
    msg: JsMsg,
    seq: number,
    cut: number,
  ): [string, Uint8Array, number] | DropReason {
    const decision = this.scope.check(msg.subject, this.components.siteOf)
    if (!decision.ok) return decision.reason
    const rest = msg.subject.slice(3)
    if (area === 'tel') {
      const interval = minInterval(decision.grant)
      const t = telemetryTime(msg.data)
      if (t === undefined) return 'payload'
      if (t >= cut) return 'time'
      if (interval > 0 && !this.gate.pass(rest, t, interval)) return 'min_interval'
      return [rest, msg.data, seq]
    }
    if (area === 'std') {
      let resource: Resource
      try {
        resource = decodeCbor(msg.data) as Resource
      } catch {
        return 'payload'
      }
      // Anything may be published on oe.std.…: a payload that is not a resource is not sent.
      if (typeof resource !== 'object' || resource === null || resource instanceof Uint8Array)
        return 'payload'
      return [rest, encodeCbor(projectResource(resource, decision.grant)), seq]
    }
    // The consumer refuses a batch holding an event it cannot decode: such an event is not sent.
    try {
      decodeCbor(msg.data)
    } catch {
      return 'payload'
    }
    return [rest, msg.data, seq]
  }

  /**
   * Check and prepare `messages`, then send them in as many batches as it takes to keep each
   * frame under MAX_BATCH_FRAME_BYTES. A record too big for a frame of its own is dropped
   * ('oversize'): sent, it would end every session at the same place.
   */
  private async sendFitting(area: SourceArea, messages: JsMsg[]): Promise<void> {
    const { stats } = this.components
    const drop = (reason: DropReason): void => {
      stats.drops[reason] = (stats.drops[reason] ?? 0) + 1
    }
    const cut = cutoff(this.view)
    const limit = MAX_BATCH_FRAME_BYTES - BATCH_FRAME_SLACK
    let records: [string, Uint8Array, number][] = []
    let size = 0
    let last: JsMsg | undefined
    let lastSeq = 0
    for (const msg of messages) {
      const seq = streamSequence(msg)
      // At or below what was taken already is a redelivery: it went, or goes, once.
      if (seq <= this.taken[area]) continue
      this.taken[area] = seq
      const prepared = this.prepare(area, msg, seq, cut)
      // Outside the grants is simply not this agreement's data; other reasons are drops.
      if (typeof prepared === 'string') {
        if (prepared !== 'not_granted') drop(prepared)
      } else {
        const bytes = recordCapacity(prepared)
        if (bytes > limit) drop('oversize')
        else {
          if (size + bytes > limit && records.length > 0) {
            await this.sendBatch(area, last!, lastSeq, records)
            if (this.closed) return
            records = []
            size = 0
          }
          records.push(prepared)
          size += bytes
        }
      }
      last = msg
      lastSeq = seq
    }
    if (last) await this.sendBatch(area, last, lastSeq, records)
  }

  /** One signed batch: `records`, covering the stream up to `last` at `upTo` (JetStream acks it later). */
  private async sendBatch(
    area: SourceArea,
    last: JsMsg,
    upTo: number,
    records: [string, Uint8Array, number][],
  ): Promise<void> {
    const { stats } = this.components
    await this.throttle(records.length)
    await this.waitCredit()
    if (this.closed) return
    if (!isActive(this.view)) {
      this.stop('the agreement is no longer active')
      return
    }
    this.credit -= 1
    const n = ++this.batchNumber
    const { frame } = encodeBatchFrame(
      { id: this.view.id, n, a: area, upTo, r: records },
      (body) => cryptoSign(null, createHash('sha256').update(body).digest(), this.components.privateKey),
      MAX_BATCH_FRAME_BYTES,
    )
    this.inFlight.set(n, { n, area, last, records: records.length })
    stats.lagRecords += records.length
    await this.channel.sendEncoded(frame)
    stats.batchesOut += 1
    stats.recordsOut += records.length
    stats.bytesOut += frame.length
    stats.lastBatchAt = Date.now()
  }
}

// ── consumer ─────────────────────────────────────────────────────────────────────────────────

export interface ConsumerSessionComponents {
  dataPlane: DataPlane
  logger: Logger
  stats: FlowStats
  states: RecordBucket<TransferState>
  tuning: TransferTuning
  /** The agreement as it is now (state may change while the session runs). */
  current: () => AgreementView | undefined
  /**
   * The site of each resource (`<kind>.<rid>`) as the provider's standing data under this
   * agreement told it, kept across sessions: grants limited to sites are checked against it.
   */
  sites: Map<string, string>
  /**
   * A violation by the provider (a protocol breach, or a batch holding records the agreement
   * does not allow): audited; the session is cut.
   */
  onViolation: (reason: string, details?: ViolationDetails) => void
  /** The receipt for the batches taken since the last one (every RECEIPT_MS while they come): audited. */
  onReceipt?: (receipt: TransferReceipt) => void
}

/**
 * What the consumer took from the provider over a stretch of batches: their numbers, counts, a
 * chain of their body digests (sha256(previous ‖ digest), from 32 zero bytes at the start of the
 * session and running on through its receipts) and the provider's signature over the last one,
 * which ties the receipt to a batch the provider signed.
 */
export interface TransferReceipt {
  batches: [number, number]
  records: number
  bytes: number
  /** The chain before this receipt's first batch (64 zeros at the start of a session). */
  prev: string
  chain: string
  lastDigest: string
  lastSig: string
}

/** How often a flowing consumer session writes a receipt into the audit log. */
const RECEIPT_MS = 1_000

const emptyHw = (): HighWater => ({ tel: 0, std: 0, evt: 0 })

/** How soon after a batch a consumer session stores its high-water mark, at most (see `saveState`). */
const STATE_SAVE_MS = 250

/** The consumer side of one transfer session. */
export class ConsumerSession {
  private readonly scope: CompiledScope
  private readonly gate = new IntervalGate()
  private readonly providerKey: KeyObject
  private state: TransferState = { hw: emptyHw(), peerSeq: 0 }
  private expectedBatch = 1
  private outstanding = 0
  private stopped = false
  private unsaved = false
  private savedAt = 0
  /** Saves in the order they were asked for: an older mark never lands after a newer one. */
  private saving: Promise<void> = Promise.resolve()
  private saveTimer: ReturnType<typeof setTimeout> | undefined
  private receipt: Omit<TransferReceipt, 'chain'> | undefined
  private receiptTimer: ReturnType<typeof setTimeout> | undefined
  /** The receipts' digest chain, running through the session. */
  private chain: Uint8Array = new Uint8Array(32)

  constructor(
    private readonly view: AgreementView,
    private readonly channel: Channel,
    private readonly components: ConsumerSessionComponents,
  ) {
    this.scope = compileScope(view.doc.body)
    this.providerKey = publicKeyObject(view.doc.body.provider.key)
  }

  private readonly knownSite = (kind: string, rid: string): string | undefined =>
    this.components.sites.get(`${kind}.${rid}`)

  static create(view: AgreementView, stream: Stream, components: ConsumerSessionComponents): ConsumerSession {
    return new ConsumerSession(view, new Channel(stream, MAX_BATCH_FRAME_BYTES), components)
  }

  stop(reason: string): void {
    this.stopped = true
    this.channel.abort(new FederationError(reason))
  }

  async run(): Promise<void> {
    const { stats, tuning } = this.components
    stats.sessions += 1
    try {
      this.state = await this.recover()
      this.channel.limitQueue(tuning.credit)
      await this.channel.send({ t: 'ready', hw: this.state.hw, credit: tuning.credit })
      this.outstanding = tuning.credit
      while (!this.stopped) {
        const frame = await this.channel.next()
        if (frame === undefined) return
        await this.onFrame(frame)
      }
    } catch (caught) {
      // A failure of the incoming side (flooding, bad framing) explains whatever failed after it.
      const error = this.channel.failure ?? caught
      if (!this.stopped) {
        const message = (error as Error).message
        stats.lastError = message
        if (error instanceof FrameError) this.components.onViolation(`bad frame: ${message}`)
        else this.components.logger.warn({ id: this.view.id, err: message }, 'transfer session ended')
      }
      this.channel.abort(error as Error)
    } finally {
      this.flushReceipt()
      clearTimeout(this.saveTimer)
      if (this.unsaved) await this.saveState().catch(() => {})
    }
  }

  /** Add a batch taken to the running receipt, which is handed over RECEIPT_MS after it began. */
  private noteReceipt(n: number, records: number, bytes: number, digest: Uint8Array, sig: Uint8Array): void {
    if (!this.receipt) {
      const prev = Buffer.from(this.chain).toString('hex')
      this.receipt = { batches: [n, n], records: 0, bytes: 0, prev, lastDigest: '', lastSig: '' }
      this.receiptTimer = setTimeout(() => this.flushReceipt(), RECEIPT_MS)
    }
    const receipt = this.receipt
    receipt.batches[1] = n
    receipt.records += records
    receipt.bytes += bytes
    this.chain = createHash('sha256').update(this.chain).update(digest).digest()
    receipt.lastDigest = Buffer.from(digest).toString('hex')
    receipt.lastSig = Buffer.from(sig).toString('base64url')
  }

  private flushReceipt(): void {
    clearTimeout(this.receiptTimer)
    const receipt = this.receipt
    this.receipt = undefined
    if (receipt) this.components.onReceipt?.({ ...receipt, chain: Buffer.from(this.chain).toString('hex') })
  }

  /** After a batch: store the high-water mark now, or within STATE_SAVE_MS of the last store. */
  private async markTaken(): Promise<void> {
    this.unsaved = true
    const due = this.savedAt + STATE_SAVE_MS - Date.now()
    if (due <= 0) {
      clearTimeout(this.saveTimer)
      this.saveTimer = undefined
      await this.saveState()
    } else {
      this.saveTimer ??= setTimeout(() => {
        this.saveTimer = undefined
        if (this.unsaved) void this.saveState().catch(() => {})
      }, due)
    }
  }

  /**
   * Store the high-water mark, at most every STATE_SAVE_MS while batches flow and never later
   * than that after the last one. A mark a little behind only lengthens the next start: what
   * OE_PEER holds beyond it is found again from the records' `Oe-Src` headers (see `recover`),
   * so it never lets a record in twice.
   */
  private saveState(): Promise<void> {
    this.unsaved = false
    this.savedAt = Date.now()
    const snapshot: TransferState = { hw: { ...this.state.hw }, peerSeq: this.state.peerSeq }
    this.saving = this.saving.catch(() => {}).then(() => this.components.states.put(this.view.id, snapshot))
    return this.saving
  }

  /** The stored high-water mark, raised by anything already published after it (a crash gap). */
  private async recover(): Promise<TransferState> {
    const stored = await this.components.states.get(this.view.id)
    const info = await this.components.dataPlane.manager.streams.info('OE_PEER')
    if (!stored) {
      // A first session: nothing in OE_PEER can be this agreement's yet. Record that before
      // saying ready, so a crash later never scans what came before.
      const fresh: TransferState = { hw: emptyHw(), peerSeq: info.state.last_seq }
      await this.components.states.put(this.view.id, fresh)
      return fresh
    }
    const state: TransferState = { hw: { ...emptyHw(), ...stored.hw }, peerSeq: stored.peerSeq }
    const js = this.components.dataPlane.jetstream
    if (info.state.last_seq <= state.peerSeq) return state
    const prefix = `${this.view.id.slice(0, 24)}.`
    const consumer = await js.consumers.get('OE_PEER', {
      filter_subjects: `oe.peer.${this.view.peer}.>`,
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: state.peerSeq + 1,
      headers_only: true,
    })
    let seen = 0
    while (true) {
      const batch = await consumer.fetch({ max_messages: 1000, expires: 1000 })
      let count = 0
      let last = 0
      for await (const msg of batch) {
        count += 1
        last = msg.seq
        const source = msg.headers?.get(SOURCE_HEADER) ?? ''
        if (!source.startsWith(prefix)) continue
        const [, area, seq] = source.split('.')
        if (area && (SOURCE_AREAS as string[]).includes(area)) {
          const value = Number(seq)
          if (value > state.hw[area as SourceArea]) state.hw[area as SourceArea] = value
        }
        seen += 1
      }
      if (count === 0 || last >= info.state.last_seq) break
    }
    // Published by an earlier session whose confirmation never came (or by the node before a
    // crash): the consumer holds them, so they count as received.
    this.components.stats.recoveredRecords += seen
    this.components.stats.recordsIn += seen
    if (seen > 0) {
      state.peerSeq = info.state.last_seq
      await this.components.states.put(this.view.id, state)
      this.components.logger.info(
        { id: this.view.id, hw: state.hw, recovered: seen },
        'transfer state recovered from OE_PEER',
      )
    }
    return state
  }

  private async onFrame(frame: unknown): Promise<void> {
    const { stats } = this.components
    const raw = frame as { t?: unknown; body?: unknown; sig?: unknown }
    if (raw?.t !== 'batch' || !(raw.body instanceof Uint8Array) || !(raw.sig instanceof Uint8Array)) {
      throw new FrameError('expected a batch frame')
    }
    if (this.outstanding <= 0) throw this.violation('the provider sent a batch without credit (flooding)')
    this.outstanding -= 1
    const digest = createHash('sha256').update(raw.body).digest()
    if (!cryptoVerify(null, digest, this.providerKey, raw.sig)) {
      throw this.violation('a batch signature does not verify against the provider key')
    }
    // The provider's own shape decodes fast; anything else the general way, record by record.
    const body = (decodeBatchBody(raw.body) ?? decodeFederationCbor(raw.body)) as {
      id?: unknown
      n?: unknown
      a?: unknown
      upTo?: unknown
      r?: unknown
    }
    if (body.id !== this.view.id)
      throw this.violation(`a batch names another agreement (${String(body.id).slice(0, 16)}…)`)
    const area = body.a as SourceArea
    if (
      typeof body.n !== 'number' ||
      typeof body.upTo !== 'number' ||
      !SOURCE_AREAS.includes(area) ||
      !Array.isArray(body.r)
    ) {
      throw this.violation('a batch does not have the fields of a batch')
    }
    // Batch numbers rise within a session: a number seen before is a replay.
    if (body.n < this.expectedBatch)
      throw this.violation(`replayed batch ${body.n} (expected ${this.expectedBatch} or later)`)
    this.expectedBatch = body.n + 1
    const view = this.components.current()
    if (!view || !isActive(view)) {
      this.stop('the agreement is no longer active')
      return
    }
    const cut = cutoff(view)
    const messages: OutgoingMessage[] = []
    const dropped: Record<string, number> = {}
    const drop = (reason: string) => {
      dropped[reason] = (dropped[reason] ?? 0) + 1
    }
    // Source sequences must rise strictly, within a batch too: anything at or below is a repeat.
    let floor = this.state.hw[area]
    // Sites that standing data in this batch tells of, learned once the batch is taken.
    const learned: [string, string][] = []
    const sourceHeader = FixedHeader.numbered(SOURCE_HEADER, `${this.view.id.slice(0, 24)}.${area}.`)
    const subjectPrefix = `oe.peer.${view.peer}.`
    for (const item of body.r as unknown[]) {
      if (!Array.isArray(item) || item.length !== 3) {
        drop('payload')
        continue
      }
      const [rest, payload, seq] = item as [unknown, unknown, unknown]
      if (
        typeof rest !== 'string' ||
        !(payload instanceof Uint8Array) ||
        typeof seq !== 'number' ||
        seq > body.upTo
      ) {
        drop('payload')
        continue
      }
      if (seq <= floor) {
        drop('replayed')
        continue
      }
      floor = seq
      const subject = `oe.${rest}`
      if (!rest.startsWith(`${area}.`)) {
        drop('not_granted')
        continue
      }
      const decision = this.scope.check(subject, this.knownSite, true)
      if (!decision.ok) {
        drop(decision.reason)
        continue
      }
      if (area === 'tel') {
        const t = telemetryTime(payload)
        if (t === undefined) {
          drop('payload')
          continue
        }
        if (t >= cut) {
          drop('after_cutoff')
          continue
        }
        if (!this.gate.pass(rest, t, minInterval(decision.grant))) {
          drop('min_interval')
          continue
        }
      } else {
        let decoded: unknown
        try {
          decoded = decodeCbor(payload)
        } catch {
          drop('payload')
          continue
        }
        if (area === 'std') {
          if (typeof decoded !== 'object' || decoded === null || decoded instanceof Uint8Array) {
            drop('payload')
            continue
          }
          const resource = decoded as Resource
          if (!withinProjection(resource, decision.grant)) {
            drop('attrs')
            continue
          }
          if (typeof resource.site === 'string') {
            if (decision.grant.sites && !decision.grant.sites.includes(resource.site)) {
              drop('site')
              continue
            }
            learned.push([rest.slice(4), resource.site])
          }
        }
      }
      messages.push({ subject: `${subjectPrefix}${rest}`, payload, headers: sourceHeader(seq) })
    }
    // An honest provider sends nothing the agreement does not allow: its own checks are the same
    // (see ProviderSession.prepare). Anything else is refused whole, and the session is cut.
    const refused = Object.values(dropped).reduce((a, b) => a + b, 0)
    if (refused > 0) {
      for (const [reason, count] of Object.entries(dropped)) {
        stats.drops[reason as ConsumerDropReason] = (stats.drops[reason as ConsumerDropReason] ?? 0) + count
      }
      throw this.violation(
        `batch ${body.n} holds ${refused} record(s) the agreement does not allow (${describeCounts(dropped)})`,
        { batch: body.n, counts: dropped },
      )
    }
    let peerSeq = 0
    if (messages.length > 0) peerSeq = await this.components.dataPlane.publishConfirmed(messages)
    if (body.upTo > this.state.hw[area]) this.state.hw[area] = body.upTo
    if (peerSeq > this.state.peerSeq) this.state.peerSeq = peerSeq
    for (const [key, site] of learned) this.components.sites.set(key, site)
    await this.markTaken()
    this.noteReceipt(body.n, messages.length, raw.body.length, digest, raw.sig)
    stats.batchesIn += 1
    stats.recordsIn += messages.length
    stats.bytesIn += raw.body.length
    stats.lastBatchAt = Date.now()
    await this.channel.send({ t: 'ack', n: body.n, credit: 1 })
    this.outstanding += 1
  }

  private violation(reason: string, details?: ViolationDetails): FederationError {
    this.components.onViolation(reason, details)
    this.stopped = true
    return new FederationError(reason)
  }
}

export { Channel as TransferChannel }

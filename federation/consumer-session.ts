/**
 * The consumer side of one transfer session: verifies each batch's signature and the agreement,
 * re-checks every record (a batch holding anything the agreement does not allow is refused whole
 * and the session cut), publishes what it takes under `oe.peer.<alias>.…` with an `Oe-Src`
 * header, stores its high-water mark, writes receipts, and only then acknowledges. After a crash
 * it reads the `Oe-Src` headers published since its stored mark, so nothing is published twice.
 */
import { createHash, verify as cryptoVerify, type KeyObject } from 'node:crypto'
import type { Stream } from '@libp2p/interface'
import { DeliverPolicy } from '@nats-io/jetstream'
import {
  type DataPlane,
  decodeCbor,
  type Lease,
  LeaseLostError,
  type Logger,
  type OutgoingMessage,
  type Resource,
} from '../data-plane/index.ts'
import { decodeBatchBody, telemetryTime } from './batch-codec.ts'
import { decodeFederationCbor } from './canonical-cbor.ts'
import { FederationError, FrameError } from './errors.ts'
import {
  type CompiledScope,
  compileScope,
  IntervalGate,
  minInterval,
  SOURCE_AREAS,
  type SourceArea,
  withinProjection,
} from './scope.ts'
import type { RecordBucket } from './stores.ts'
import {
  type AgreementView,
  type ConsumerDropReason,
  cutoff,
  type FlowStats,
  type HighWater,
  isActive,
  MAX_BATCH_FRAME_BYTES,
  publicKeyObject,
  SOURCE_HEADER,
  type TransferState,
  type TransferTuning,
  type ViolationDetails,
} from './transfer.ts'
import { Channel } from './transfer-channel.ts'

const describeCounts = (counts: Record<string, number>): string =>
  Object.entries(counts)
    .map(([reason, count]) => `${reason} ${count}`)
    .join(', ')

/** How often a flowing consumer session writes a receipt into the audit log. */
const RECEIPT_MS = 1_000

const emptyHw = (): HighWater => ({ tel: 0, std: 0, evt: 0 })

/** Records' subjects a session keeps made (see `subjectsFor`) before it starts afresh. */
const SUBJECT_CACHE_SIZE = 100_000

/** How soon after a batch a consumer session stores its high-water mark, at most (see `saveState`). */
const STATE_SAVE_MS = 250

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
  /**
   * The key the provider signs batches with (base64url): the key its connection is authenticated
   * with, which after a key rotation is the successor of the one the agreement names. Default:
   * the agreement's provider key.
   */
  providerKey?: string
  /**
   * This replica's lease on receiving the agreement: checked before each batch is published and
   * before the mark is stored, so a replica that lost it publishes nothing more.
   */
  lease?: Lease
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
  /** See `subjectsFor` and `sourceHeaders`: per-record strings and bytes made once. */
  private readonly subjectNames = new Map<string, [string, string]>()
  private subjectsPeer: string | undefined
  private readonly headerPrefixes: Partial<Record<SourceArea, Uint8Array>> = {}

  constructor(
    private readonly view: AgreementView,
    private readonly channel: Channel,
    private readonly components: ConsumerSessionComponents,
  ) {
    this.scope = compileScope(view.doc.body)
    this.providerKey = publicKeyObject(components.providerKey ?? view.doc.body.provider.key)
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
      // Also after the lease was lost: a mark behind the owner's only makes a later start scan
      // further (the header scan raises it); one that is current spares that scan.
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
    const sourceHeader = this.sourceHeaders(area)
    const subjects = this.subjectsFor(view.peer)
    const areaPrefix = `${area}.`
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
      if (!rest.startsWith(areaPrefix)) {
        drop('not_granted')
        continue
      }
      let names = subjects.get(rest)
      if (names === undefined) {
        if (subjects.size >= SUBJECT_CACHE_SIZE) subjects.clear()
        names = [`oe.${rest}`, `oe.peer.${view.peer}.${rest}`]
        subjects.set(rest, names)
      }
      const decision = this.scope.check(names[0], this.knownSite, true)
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
      messages.push({ subject: names[1], payload, encodedHeaders: sourceHeader(seq) })
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
    const lease = this.components.lease
    if (lease && !lease.valid()) throw new LeaseLostError(lease.name)
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

  /** Per record, `oe.<rest>` (for the scope) and `oe.peer.<alias>.<rest>`, kept per alias. */
  private subjectsFor(peer: string): Map<string, [string, string]> {
    if (peer !== this.subjectsPeer) {
      this.subjectsPeer = peer
      this.subjectNames.clear()
    }
    return this.subjectNames
  }

  /**
   * The `Oe-Src: <agreement>.<area>.<seq>` header block of each record, written as bytes: the
   * same block nats.js would write for it, without a header object per record.
   */
  private sourceHeaders(area: SourceArea): (seq: number) => Uint8Array {
    let prefix = this.headerPrefixes[area]
    if (prefix === undefined) {
      const value = `${this.view.id.slice(0, 24)}.${area}.`
      if (!/^[\x20-\x7e]*$/.test(value)) throw new FederationError('an agreement id that is not header-safe')
      prefix = new TextEncoder().encode(`NATS/1.0\r\n${SOURCE_HEADER}: ${value}`)
      this.headerPrefixes[area] = prefix
    }
    const head = prefix
    return (seq) => {
      if (!Number.isSafeInteger(seq) || seq < 0) throw new FederationError(`${seq} is not a source sequence`)
      let digits = 1
      for (let rest = seq; rest >= 10; rest = Math.floor(rest / 10)) digits += 1
      const block = new Uint8Array(head.length + digits + 4)
      block.set(head)
      let at = head.length + digits
      for (let rest = seq, i = 0; i < digits; i++) {
        block[--at] = 0x30 + (rest % 10)
        rest = Math.floor(rest / 10)
      }
      block.fill(0x0d, block.length - 4)
      block[block.length - 3] = 0x0a
      block[block.length - 1] = 0x0a
      return block
    }
  }

  private violation(reason: string, details?: ViolationDetails): FederationError {
    this.components.onViolation(reason, details)
    this.stopped = true
    return new FederationError(reason)
  }
}

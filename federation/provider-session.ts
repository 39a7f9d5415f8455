/**
 * The provider side of one transfer session: reads its JetStream streams through one durable
 * consumer per agreement and stream (recreated each session from the consumer's high-water
 * mark), checks every record against the compiled scope, projects and rate-limits, and sends
 * signed batches while it holds credit. JetStream is acked only once the consumer acks a batch.
 * This is the node's hot path.
 */
import { createHash, sign as cryptoSign, type KeyObject } from 'node:crypto'
import type { Stream } from '@libp2p/interface'
import { AckPolicy, DeliverPolicy, type JsMsg } from '@nats-io/jetstream'
import { nanos } from '@nats-io/nats-core'
import {
  closeConsumerMessages,
  type DataPlane,
  decodeCbor,
  encodeCbor,
  type Lease,
  type Logger,
  type Resource,
} from '../data-plane/index.ts'
import {
  encodeBatchFrame,
  messageSubject,
  recordCapacity,
  streamSequence,
  telemetryTime,
} from './batch-codec.ts'
import { FederationError, FrameError } from './errors.ts'
import {
  AREA_STREAM,
  type CompiledScope,
  compileScope,
  type DropReason,
  IntervalGate,
  minInterval,
  projectResource,
  type SourceArea,
} from './scope.ts'
import {
  type AgreementView,
  cutoff,
  type FlowStats,
  type HighWater,
  isActive,
  MAX_BATCH_FRAME_BYTES,
  type TransferTuning,
} from './transfer.ts'
import { Channel, Inbox } from './transfer-channel.ts'

/** How long the provider waits for a message before it asks whether its consumer stalled. */
const STALL_CHECK_MS = 5_000
/** Room kept in a batch frame for everything but the records (keys, id, numbers, signature). */
const BATCH_FRAME_SLACK = 1_024

/** JetStream's redelivery timer for the provider's consumers: far beyond any session. */
const ACK_WAIT_MS = 24 * 3_600_000

/** Messages per JetStream pull request. */
const pullSize = (tuning: TransferTuning): number => tuning.maxBatchRecords * 2

export interface ProviderSessionComponents {
  dataPlane: DataPlane
  logger: Logger
  privateKey: KeyObject
  siteOf: (kind: string, rid: string) => string | undefined
  stats: FlowStats
  tuning: TransferTuning
  /**
   * This replica's lease on the agreement's outgoing transfer: checked before each batch, so an
   * owner that could not renew it stops before another replica can start.
   */
  lease?: Lease
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

  /** Run until the stream ends, the agreement ends, the lease goes, or `stop()`. */
  async run(): Promise<void> {
    const { stats, lease } = this.components
    stats.sessions += 1
    const onLeaseLost = (): void => this.stop('provider lease lost')
    lease?.signal.addEventListener('abort', onLeaseLost, { once: true })
    try {
      lease?.check()
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
      lease?.signal.removeEventListener('abort', onLeaseLost)
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

  /** Durable consumers of this agreement and stream, of any owner: `oe-agr-<id>-<area>[-<fence>]`. */
  private durablePrefix(area: SourceArea): string {
    return `oe-agr-${this.view.id.slice(0, 24)}-${area}`
  }

  /**
   * One durable consumer per owner (its lease fence in the name): a replica that lost the lease
   * and still pulls from its own consumer can never take messages from the new owner's.
   */
  private durableName(area: SourceArea): string {
    const lease = this.components.lease
    return lease ? `${this.durablePrefix(area)}-${lease.fence}` : this.durablePrefix(area)
  }

  /** Delete this agreement's durable consumers on `stream`: earlier owners' and this one's. */
  private async deleteDurables(stream: string, area: SourceArea): Promise<void> {
    const jsm = this.components.dataPlane.manager
    const prefix = this.durablePrefix(area)
    const names = new Set([prefix, this.durableName(area)])
    try {
      for await (const info of jsm.consumers.list(stream)) {
        if (info.name === prefix || info.name.startsWith(`${prefix}-`)) names.add(info.name)
      }
    } catch {
      // Listing failed: the known names are deleted all the same.
    }
    await Promise.all([...names].map((name) => jsm.consumers.delete(stream, name).catch(() => {})))
  }

  /** Recreate the durable consumer so delivery starts right after what the consumer holds. */
  private async prepareConsumer(area: SourceArea, hw: number): Promise<string> {
    const { dataPlane, tuning } = this.components
    const jsm = dataPlane.manager
    const stream = AREA_STREAM[area]
    const name = this.durableName(area)
    await this.deleteDurables(stream, area)
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
    const subject = messageSubject(msg)
    const decision = this.scope.check(subject, this.components.siteOf)
    if (!decision.ok) return decision.reason
    const rest = subject.slice(3)
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
    // Fencing: a replica whose lease ran out sends nothing more (another may own it by now).
    if (this.components.lease && !this.components.lease.valid()) {
      this.stop('provider lease lost')
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

/**
 * The data-plane facade the node and plugins use: publish telemetry and standing data with
 * JetStream acknowledgements, read resources, and watch subjects. Every publish is confirmed by
 * the stream before it counts as accepted, so an answer of "accepted" means stored.
 */
import {
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
} from '@nats-io/jetstream'
import { type KV, Kvm } from '@nats-io/kv'
import { type Msg, type MsgHdrs, type NatsConnection, nuid, type Subscription } from '@nats-io/nats-core'
import { decodeCbor, decodeForDisplay, encodeCbor, encodeTelemetryPayload } from './codec.ts'
import { DataPlaneError, NotConnectedError, PublishError } from './errors.ts'
import type { Resource, ResourceKind, TelemetryRecord } from './model.ts'
import type { Logger } from './nats-server.ts'
import { ensureStreams, RESOURCES_BUCKET, type RetentionLimits, streamForSubject } from './streams.ts'
import { subjects } from './subjects.ts'

export interface DataPlaneInit {
  limits: RetentionLimits
  /** How long a publish may wait for JetStream to confirm it. */
  publishTimeoutMs?: number
  /** Copies of each stream and KV bucket (JetStream replicas); default 1. */
  replicas?: number
}

export interface DataPlaneComponents {
  connection: NatsConnection
  logger: Logger
}

export interface OutgoingMessage {
  subject: string
  payload: Uint8Array
  headers?: MsgHdrs
  /**
   * The header block in its wire form (`NATS/1.0\r\n<key>: <value>\r\n\r\n`), instead of
   * `headers`: for a hot path that stamps a header of its own on every message (the transfer
   * consumer's `Oe-Src`), with no header object per message. The caller vouches for its form.
   */
  encodedHeaders?: Uint8Array
}

export interface SubjectMessage {
  subject: string
  data: unknown
}

interface PendingBatch {
  total: number
  remaining: number
  failures: string[]
  /** Highest stream sequence JetStream reported for the batch. */
  lastSeq: number
  resolve: (lastSeq: number) => void
  reject: (error: Error) => void
  timer: ReturnType<typeof setTimeout>
}

/**
 * End a JetStream consume() at once. nats.js resolves close() only when the iterator has been
 * read up to its end marker, which never happens once the reader has gone with messages still
 * buffered; so stop it, ask it to close, and wait for that at most a moment.
 */
export async function closeConsumerMessages(messages: {
  stop(err?: Error): void
  close(): Promise<unknown>
}): Promise<void> {
  messages.stop()
  await Promise.race([messages.close().catch(() => undefined), Bun.sleep(1_000)])
}

const EMPTY_BLOCK: Uint8Array = new Uint8Array(0)

const SEQ_KEY = [0x22, 0x73, 0x65, 0x71, 0x22, 0x3a] // "seq":

/** The `seq` of a JetStream publish ack (`{"stream":"X","seq":N,…}`), read without JSON.parse. */
function ackSequence(data: Uint8Array): number {
  outer: for (let i = 0; i + SEQ_KEY.length < data.length; i++) {
    for (let j = 0; j < SEQ_KEY.length; j++) if (data[i + j] !== SEQ_KEY[j]) continue outer
    let value = 0
    for (let k = i + SEQ_KEY.length; k < data.length; k++) {
      const digit = data[k]! - 0x30
      if (digit < 0 || digit > 9) break
      value = value * 10 + digit
    }
    return value
  }
  return 0
}

export class DataPlane {
  private jsClient: JetStreamClient | undefined
  private jsManager: JetStreamManager | undefined
  private kv: KV | undefined
  private ackSubscription: Subscription | undefined
  private readonly ackPrefix = `_INBOX.oe-ack.${nuid.next()}`
  private readonly pending = new Map<string, PendingBatch>()
  private batchSequence = 0
  private started = false
  private readonly reconnectListeners = new Set<() => void>()

  constructor(
    private readonly init: DataPlaneInit,
    private readonly components: DataPlaneComponents,
  ) {}

  get connection(): NatsConnection {
    return this.components.connection
  }

  /** Copies of each stream and KV bucket: every bucket the node creates uses this. */
  get replicas(): number {
    return this.init.replicas ?? 1
  }

  get jetstream(): JetStreamClient {
    if (!this.jsClient) throw new NotConnectedError('the data plane has not been started')
    return this.jsClient
  }

  get manager(): JetStreamManager {
    if (!this.jsManager) throw new NotConnectedError('the data plane has not been started')
    return this.jsManager
  }

  /** True while the NATS connection is up and not closing. */
  isConnected(): boolean {
    const nc = this.components.connection
    return this.started && !nc.isClosed() && !nc.isDraining() && nc.info !== undefined && this.connected
  }

  private connected = true

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.started) return
    const nc = this.components.connection
    // On a cluster, creating a replicated stream waits for its group to elect a leader: seconds
    // when several replicas of the node start at once on a busy host.
    const apiTimeout = this.replicas > 1 ? 30_000 : 5_000
    this.jsManager = await jetstreamManager(nc, { timeout: apiTimeout })
    options.signal?.throwIfAborted()
    await this.ensureStreamsPatiently(options)
    this.jsClient = jetstream(nc, { timeout: this.replicas > 1 ? 15_000 : 5_000 })
    this.kv = await new Kvm(this.jsClient).create(RESOURCES_BUCKET, { history: 5, replicas: this.replicas })
    this.ackSubscription = nc.subscribe(`${this.ackPrefix}.*`, {
      callback: (error, msg) => {
        if (!error) this.onAck(msg)
      },
    })
    this.started = true
    void this.watchStatus()
  }

  /**
   * Create or update the streams, waiting while JetStream is not there yet: a NATS cluster that
   * starts with the node (a restart of everything) answers only once it has elected its leaders.
   */
  private async ensureStreamsPatiently(options: { signal?: AbortSignal }): Promise<void> {
    const deadline = Date.now() + (this.replicas > 1 ? 60_000 : 0)
    for (;;) {
      try {
        await ensureStreams(this.jsManager!, this.init.limits, this.replicas)
        // On a cluster that has just started, every replicated stream (the KV buckets too)
        // answers only once its group has a leader: wait for all of them here, once.
        if (this.replicas > 1) {
          for await (const name of this.jsManager!.streams.names()) await this.jsManager!.streams.info(name)
        }
        return
      } catch (error) {
        const message = (error as Error).message ?? ''
        // "no suitable peers for placement": the cluster's servers have not all joined yet.
        const transient = /timeout|no responders|jetstream.*(not|unavailable)|503|no suitable peers/i.test(
          message,
        )
        if (!transient || Date.now() >= deadline) throw error
        this.components.logger.warn({ err: message }, 'JetStream not ready yet; trying again')
        options.signal?.throwIfAborted()
        await Bun.sleep(500)
      }
    }
  }

  async stop(): Promise<void> {
    if (!this.started) return
    this.started = false
    this.ackSubscription?.unsubscribe()
    for (const batch of this.pending.values()) {
      clearTimeout(batch.timer)
      batch.reject(new NotConnectedError('the data plane is stopping'))
    }
    this.pending.clear()
  }

  private async watchStatus(): Promise<void> {
    for await (const status of this.components.connection.status()) {
      if (status.type === 'disconnect') {
        this.connected = false
        this.components.logger.warn({ server: status.server }, 'data plane disconnected')
        this.failPending()
      } else if (status.type === 'reconnect') {
        this.connected = true
        this.components.logger.info({ server: status.server }, 'data plane reconnected')
        for (const listener of this.reconnectListeners) listener()
      }
    }
  }

  /**
   * The connection is lost: acks of what was already sent on it will not come (a nats-server
   * answers on the connection it received on), so waiting out the publish timeout only delays
   * the caller's retry, by 10 s after a nats-server restart. Every unconfirmed batch fails now,
   * as it would at the timeout: some of it may be stored, which a retry with Idempotency-Key
   * (Nats-Msg-Id) or a transfer's recovery from `Oe-Src` finds and does not store twice.
   */
  private failPending(): void {
    for (const [id, batch] of this.pending) {
      clearTimeout(batch.timer)
      this.pending.delete(id)
      batch.reject(
        new PublishError(
          `the connection to NATS was lost before JetStream confirmed ${batch.total - batch.remaining} of ${batch.total} messages`,
        ),
      )
    }
  }

  /**
   * Call `listener` each time the connection to NATS comes back after a loss (a restarted
   * nats-server, say). Returns the function that removes it.
   */
  onReconnect(listener: () => void): () => void {
    this.reconnectListeners.add(listener)
    return () => this.reconnectListeners.delete(listener)
  }

  /** Publish telemetry records to `oe.tel.…`; resolves once JetStream has stored every one. */
  async publishTelemetry(records: readonly TelemetryRecord[]): Promise<void> {
    const messages: OutgoingMessage[] = new Array(records.length)
    for (let i = 0; i < records.length; i++) {
      const record = records[i]!
      messages[i] = {
        subject: subjects.telemetry(record.kind, record.rid, record.q),
        payload: encodeTelemetryPayload(record),
      }
    }
    await this.publishConfirmed(messages)
  }

  /** Publish an event payload on `oe.evt.<kind>.<rid>.<type>`. */
  async publishEvent(
    kind: ResourceKind,
    rid: string,
    type: string,
    event: Record<string, unknown>,
  ): Promise<void> {
    await this.publishConfirmed([{ subject: subjects.event(kind, rid, type), payload: encodeCbor(event) }])
  }

  /** Store standing data in KV and publish it on `oe.std.<kind>.<rid>` so it can be routed. */
  async upsertResource(resource: Resource): Promise<void> {
    if (!this.kv) throw new NotConnectedError('the data plane has not been started')
    const payload = encodeCbor(resource)
    await this.kv.put(subjects.resourceKey(resource.kind, resource.rid), payload)
    await this.publishConfirmed([{ subject: subjects.standing(resource.kind, resource.rid), payload }])
  }

  async getResource(kind: ResourceKind, rid: string): Promise<Resource | undefined> {
    if (!this.kv) throw new NotConnectedError('the data plane has not been started')
    const entry = await this.kv.get(subjects.resourceKey(kind, rid))
    if (entry?.operation !== 'PUT') return undefined
    return decodeCbor(entry.value) as Resource
  }

  /**
   * Publish messages into JetStream and wait until every one is confirmed. Acks for the whole
   * batch come back on one reply subject, so a batch of thousands costs one pending entry.
   */
  async publishConfirmed(messages: readonly OutgoingMessage[]): Promise<number> {
    if (messages.length === 0) return 0
    if (!this.started) throw new NotConnectedError('the data plane has not been started')
    const nc = this.components.connection
    const id = String(++this.batchSequence)
    const reply = `${this.ackPrefix}.${id}`
    const timeoutMs = this.init.publishTimeoutMs ?? 10_000
    const done = new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        const batch = this.pending.get(id)
        this.pending.delete(id)
        reject(
          new PublishError(
            `JetStream confirmed ${messages.length - (batch?.remaining ?? 0)} of ${messages.length} messages within ${timeoutMs} ms`,
          ),
        )
      }, timeoutMs)
      this.pending.set(id, {
        total: messages.length,
        remaining: messages.length,
        failures: [],
        lastSeq: 0,
        resolve,
        reject,
        timer,
      })
    })
    // nats.js reads a header through its encode() during publish(), and keeps neither the options
    // nor the header: one of each serves the whole batch.
    const encoded = {
      block: EMPTY_BLOCK,
      encode(): Uint8Array {
        return this.block
      },
    }
    const plain = { reply }
    const withEncoded = { reply, headers: encoded as unknown as MsgHdrs }
    try {
      for (const message of messages) {
        if (message.encodedHeaders !== undefined) {
          encoded.block = message.encodedHeaders
          nc.publish(message.subject, message.payload, withEncoded)
        } else {
          nc.publish(
            message.subject,
            message.payload,
            message.headers ? { reply, headers: message.headers } : plain,
          )
        }
      }
    } catch (error) {
      const batch = this.pending.get(id)
      if (batch) clearTimeout(batch.timer)
      this.pending.delete(id)
      throw new PublishError(`publish failed: ${(error as Error).message}`, { cause: error })
    }
    return done
  }

  private onAck(msg: Msg): void {
    const id = msg.subject.slice(this.ackPrefix.length + 1)
    const batch = this.pending.get(id)
    if (!batch) return
    if (msg.headers?.hasError) {
      batch.failures.push(
        msg.headers.code === 503 ? 'no stream captures the subject' : msg.headers.description,
      )
    } else if (msg.data.length === 0 || msg.data[2] !== 0x73 /* {"s…: {"stream":…} */) {
      const text = msg.string()
      if (text.includes('"error"')) batch.failures.push(text)
    } else {
      const seq = ackSequence(msg.data)
      if (seq > batch.lastSeq) batch.lastSeq = seq
    }
    batch.remaining -= 1
    if (batch.remaining > 0) return
    clearTimeout(batch.timer)
    this.pending.delete(id)
    if (batch.failures.length > 0) {
      batch.reject(
        new PublishError(`JetStream refused ${batch.failures.length} message(s): ${batch.failures[0]}`),
      )
    } else {
      batch.resolve(batch.lastSeq)
    }
  }

  /**
   * Messages on a subject as they arrive; with `fromStart`, first what the stream holding the
   * subject already has. Payloads are decoded for display (CBOR → objects).
   */
  async *watch(
    subject: string,
    options: { fromStart?: boolean; signal?: AbortSignal } = {},
  ): AsyncGenerator<SubjectMessage> {
    const { signal } = options
    if (options.fromStart) {
      const stream = streamForSubject(subject) ?? (await this.findStream(subject))
      const consumer = await this.jetstream.consumers.get(stream, {
        filter_subjects: subject,
        deliver_policy: DeliverPolicy.All,
      })
      const messages = await consumer.consume({ max_messages: 1024 })
      const onAbort = (): void => {
        void closeConsumerMessages(messages)
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      try {
        for await (const msg of messages) {
          yield { subject: msg.subject, data: decodeForDisplay(msg.data) }
        }
      } finally {
        signal?.removeEventListener('abort', onAbort)
        await closeConsumerMessages(messages)
      }
      return
    }
    const subscription = this.components.connection.subscribe(subject)
    const onAbort = (): void => subscription.unsubscribe()
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      for await (const msg of subscription) yield { subject: msg.subject, data: decodeForDisplay(msg.data) }
    } finally {
      signal?.removeEventListener('abort', onAbort)
      subscription.unsubscribe()
    }
  }

  private async findStream(subject: string): Promise<string> {
    try {
      return await this.manager.streams.find(subject)
    } catch {
      throw new DataPlaneError(
        `no stream holds '${subject}': --from-start needs a subject inside one stream (oe.tel.>, oe.evt.>, …)`,
      )
    }
  }
}

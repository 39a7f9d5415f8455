/**
 * The plugin host: validates each enabled plugin's config slice, builds its context (scoped
 * logger, metrics, data folder, signal, data-plane facade), starts plugins in order and stops
 * them in reverse, and reports their readiness and status.
 */
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import {
  AckPolicy,
  type Consumer,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type JsMsg,
} from '@nats-io/jetstream'
import { type KV, Kvm, KvWatchInclude } from '@nats-io/kv'
import { nanos } from '@nats-io/nats-core'
import { Counter, Gauge, type Registry } from 'prom-client'
import {
  closeConsumerMessages,
  type DataPlane,
  decodeCbor,
  encodeCbor,
  isResourceId,
  isResourceKind,
  type LeaseManager,
  type Logger,
  type MqttAuthorizer,
  mqttTopicToSubject,
  parseResource,
  parseTelemetryRecord,
  RESOURCES_BUCKET,
  type Resource,
  type ResourceKind,
  subjects,
  type TelemetryRecord,
} from '../data-plane/index.ts'
import type {
  ControlMessage,
  ControlSelector,
  EventMessage,
  EventSelector,
  PluginDataPlane,
  PluginDefinition,
  PluginInstance,
  PluginLease,
  PluginLeaseHandle,
  PluginMetrics,
  PluginMqtt,
  PluginStore,
  ResourceChange,
  TokenAuthorization,
  TokenAuthorizationRequest,
} from './api.ts'
import { PluginConfigError, PluginError } from './errors.ts'

const STORE_NAME = /^[a-z0-9][a-z0-9-]{0,31}$/
const LEASE_NAME = /^[a-z0-9][a-z0-9_-]{0,63}(\.[a-z0-9][a-z0-9_-]{0,63})*$/
/** Core NATS subject of token authorisation requests (request/reply, not stored). */
const TOKEN_AUTH_SUBJECT = 'oe.auth.token'
const SUBJECT_TOKEN = /^[A-Za-z0-9_-]{1,64}$/
/** JetStream KV keys: no leading/trailing dot, no empty tokens. */
/** A compare-and-set that lost: the key was written (or created) since. */
function isWrongLastSequence(error: unknown): boolean {
  if (error instanceof JetStreamApiError)
    return (
      error.code === JetStreamApiCodes.StreamWrongLastSequence ||
      error.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown
    )
  return /wrong last sequence/i.test((error as Error)?.message ?? '')
}

const STORE_KEY = /^[-/_=a-zA-Z0-9]+(?:\.[-/_=a-zA-Z0-9]+)*$/

export interface PluginHostInit {
  /** `[plugins.<id>]` tables from config.toml; `enabled = true` turns one on. */
  config: Record<string, Record<string, unknown>>
  /** `<data-dir>/plugins`. */
  dir: string
}

export interface PluginHostComponents {
  dataPlane: DataPlane
  logger: Logger
  registry: Registry
  definitions: readonly PluginDefinition[]
  /** The data plane's MQTT listener, if the node runs one (else why not). */
  mqtt?: PluginHostMqtt
  /** Leases shared by the node's replicas, for plugins' single-owner work (`ctx.lease`). */
  leases?: LeaseManager
}

export interface PluginHostMqtt {
  url?: string
  unavailable?: string
  /** Decides connecting MQTT clients (the embedded server's authorization callout). */
  callout?: { setAuthorizer(authorizer: MqttAuthorizer | undefined): void }
}

type MqttDecide = Parameters<PluginMqtt['authorize']>[0]

export interface PluginStatus {
  id: string
  version: string
  state: 'starting' | 'running' | 'stopped' | 'failed'
  ready: boolean
  error?: string
  [detail: string]: unknown
}

interface Running {
  definition: PluginDefinition
  instance: PluginInstance
  abort: AbortController
  state: PluginStatus['state']
  error?: string
  closers: (() => Promise<unknown>)[]
  /** Control subscriptions being set up: start() waits for them, so none is missed after ready. */
  setups: Promise<void>[]
}

/** Check every enabled plugin's config before anything starts; issues carry `plugins.<id>.<key>`. */
export function validatePluginConfig(
  config: Record<string, Record<string, unknown>>,
  definitions: readonly PluginDefinition[],
): { definition: PluginDefinition; config: unknown }[] {
  const enabled: { definition: PluginDefinition; config: unknown }[] = []
  const issues: { path: string; message: string }[] = []
  for (const [id, slice] of Object.entries(config)) {
    const { enabled: on, ...rest } = slice
    if (on !== undefined && typeof on !== 'boolean')
      issues.push({ path: `plugins.${id}.enabled`, message: 'must be true or false' })
    if (on !== true) continue
    const definition = definitions.find((d) => d.id === id)
    if (!definition) {
      issues.push({
        path: `plugins.${id}`,
        message: `unknown plugin (available: ${definitions.map((d) => d.id).join(', ')})`,
      })
      continue
    }
    const result = definition.configSchema.safeParse(rest)
    if (!result.success) {
      for (const issue of result.error.issues) {
        const path = issue.path.map(String).join('.')
        const located =
          issue.code === 'unrecognized_keys'
            ? issue.keys.map((key) => ({
                path: `plugins.${id}.${path ? `${path}.` : ''}${key}`,
                message: 'unknown key',
              }))
            : [{ path: `plugins.${id}${path ? `.${path}` : ''}`, message: issue.message }]
        issues.push(...located)
      }
      continue
    }
    enabled.push({ definition, config: result.data })
  }
  if (issues.length > 0) throw new PluginConfigError('config', issues)
  return enabled
}

export class PluginHost {
  private readonly running: Running[] = []
  private readonly mqttDeciders: { id: string; decide: MqttDecide }[] = []

  constructor(
    private readonly init: PluginHostInit,
    private readonly components: PluginHostComponents,
  ) {}

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    const enabled = validatePluginConfig(this.init.config, this.components.definitions)
    for (const { definition, config } of enabled) {
      const abort = new AbortController()
      const dir = join(this.init.dir, definition.id)
      await mkdir(dir, { recursive: true, mode: 0o700 })
      const logger = this.components.logger.child({ plugin: definition.id })
      const entry: Running = { definition, instance: {}, abort, state: 'starting', closers: [], setups: [] }
      this.running.push(entry)
      try {
        entry.instance = await definition.create({
          id: definition.id,
          logger,
          config,
          dataDir: dir,
          signal: abort.signal,
          dataPlane: this.facade(entry, logger),
          metrics: this.metrics(definition.id),
          store: (name) => this.store(definition.id, name),
          lease: (name, work) => this.lease(definition.id, name, work, abort.signal, logger, entry.closers),
        })
        await entry.instance.start?.({ signal: options.signal ?? abort.signal })
        await Promise.all(entry.setups)
        entry.state = 'running'
        logger.info({ version: definition.version }, 'plugin started')
      } catch (error) {
        entry.state = 'failed'
        entry.error = (error as Error).message
        await this.stop()
        throw new PluginError(definition.id, `failed to start: ${(error as Error).message}`, { cause: error })
      }
    }
  }

  async stop(): Promise<void> {
    this.components.mqtt?.callout?.setAuthorizer(undefined)
    this.mqttDeciders.length = 0
    while (this.running.length > 0) {
      const entry = this.running.pop()!
      entry.abort.abort()
      for (const close of entry.closers) await close().catch(() => {})
      try {
        await entry.instance.stop?.()
      } catch (error) {
        this.components.logger.warn(
          { plugin: entry.definition.id, err: (error as Error).message },
          'plugin stop failed',
        )
      }
      entry.state = 'stopped'
    }
  }

  ready(): boolean {
    return this.running.every((entry) => entry.state === 'running' && (entry.instance.ready?.() ?? true))
  }

  status(): PluginStatus[] {
    return this.running.map((entry) => ({
      ...(entry.instance.status?.() ?? {}),
      id: entry.definition.id,
      version: entry.definition.version,
      state: entry.state,
      ready: entry.state === 'running' && (entry.instance.ready?.() ?? true),
      ...(entry.error ? { error: entry.error } : {}),
    }))
  }

  /** Run an operator action of a plugin. */
  async action(id: string, name: string, input: Record<string, unknown>): Promise<unknown> {
    const entry = this.running.find((candidate) => candidate.definition.id === id)
    if (!entry) throw new PluginError(id, 'is not enabled')
    const action = entry.instance.actions?.[name]
    if (!action) {
      throw new PluginError(
        id,
        `has no action '${name}' (available: ${Object.keys(entry.instance.actions ?? {}).join(', ') || 'none'})`,
      )
    }
    return action(input)
  }

  /**
   * Single-owner work of a plugin: run `work` while this replica holds lease
   * `plugin.<id>.<name>`, start it again whenever the lease comes back, stop it (its signal)
   * when the lease goes or the plugin stops.
   */
  private lease(
    id: string,
    name: string,
    work: (lease: PluginLease) => Promise<void>,
    stopped: AbortSignal,
    logger: Logger,
    closers: (() => Promise<unknown>)[],
  ): PluginLeaseHandle {
    if (!LEASE_NAME.test(name))
      throw new PluginError(id, `lease name '${name}' is not dot-separated [a-z0-9][a-z0-9_-]{0,63} tokens`)
    const leases = this.components.leases
    /** The work now running on this replica, until it has returned. */
    let running: Promise<void> | undefined
    const run = (lease: PluginLease): void => {
      const done = work(lease).catch((error) => {
        if (!lease.signal.aborted)
          logger.warn({ lease: name, err: (error as Error).message }, 'single-owner work failed')
      })
      running = done
      void done.then(() => {
        if (running === done) running = undefined
      })
    }
    if (!leases) {
      // No replicas: the work is this node's alone.
      run({ signal: stopped, fence: 1, valid: () => !stopped.aborted })
      return { held: true, release: async () => {} }
    }
    const leaseName = `plugin.${id}.${name}`
    let current: PluginLease | undefined
    const handle = leases.acquire(leaseName, {
      onAcquired: (lease) => {
        const signal = AbortSignal.any([lease.signal, stopped])
        current = { signal, fence: lease.fence, valid: () => lease.valid() && !stopped.aborted }
        logger.info({ lease: name, fence: lease.fence }, 'this replica runs the single-owner work')
        run(current)
      },
      onLost: (reason) => {
        current = undefined
        logger.warn({ lease: name, reason }, 'single-owner work stopped: lease lost')
      },
    })
    const release = async (): Promise<void> => {
      current = undefined
      // The work sees its signal abort (the plugin stops); the lease is given up only once it
      // has returned (5 s at most), so the next owner never overlaps a step still under way.
      if (running && stopped.aborted)
        await Promise.race([running, new Promise((resolve) => setTimeout(resolve, 5_000).unref?.())])
      await handle.release()
    }
    // Stopping the plugin (which aborts `stopped` first) waits for this, so the node lets its
    // leases go only after the work has returned.
    closers.push(release)
    return {
      get held() {
        return current?.valid() ?? false
      },
      release,
    }
  }

  /** A plugin's KV bucket `oe-plugin-<id>-<name>` on the node's data plane. */
  private async store(id: string, name: string): Promise<PluginStore> {
    if (!STORE_NAME.test(name))
      throw new PluginError(id, `store name '${name}' is not [a-z0-9][a-z0-9-]{0,31}`)
    const bucket = `oe-plugin-${id}-${name}`
    const kv = await new Kvm(this.components.dataPlane.jetstream)
      .create(bucket, { history: 1, replicas: this.components.dataPlane.replicas })
      .catch((error) => {
        throw new PluginError(id, `cannot open store '${name}': ${(error as Error).message}`, {
          cause: error,
        })
      })
    const checked = async <T>(key: string, work: () => Promise<T>): Promise<T> => {
      if (!STORE_KEY.test(key)) throw new PluginError(id, `store key '${key}' is not [-/_=.a-zA-Z0-9]+`)
      return work()
    }
    return {
      bucket,
      get: (key) =>
        checked(key, async () => {
          const entry = await kv.get(key)
          return entry?.operation === 'PUT' ? entry.value : undefined
        }),
      put: (key, value) =>
        checked(key, async () => {
          await kv.put(key, value)
        }),
      delete: (key) => checked(key, () => kv.delete(key)),
      keys: async (filter) => {
        const keys: string[] = []
        for await (const key of await kv.keys(filter ?? '>')) keys.push(key)
        return keys
      },
      getEntry: (key) =>
        checked(key, async () => {
          const entry = await kv.get(key)
          return entry?.operation === 'PUT' ? { value: entry.value, revision: entry.revision } : undefined
        }),
      create: (key, value) =>
        checked(key, async () => {
          try {
            return await kv.create(key, value)
          } catch (error) {
            if (isWrongLastSequence(error)) return undefined
            throw error
          }
        }),
      update: (key, value, revision) =>
        checked(key, async () => {
          try {
            return await kv.update(key, value, revision)
          } catch (error) {
            if (isWrongLastSequence(error)) return undefined
            throw error
          }
        }),
      watch: async (filter, onChange, options = {}) => {
        if (options.signal?.aborted) return
        const watcher = await kv.watch({
          key: filter ?? '>',
          include: options.initial ? KvWatchInclude.LastValue : KvWatchInclude.UpdatesOnly,
        })
        options.signal?.addEventListener('abort', () => watcher.stop(), { once: true })
        void (async () => {
          for await (const entry of watcher) {
            try {
              onChange({
                key: entry.key,
                value: entry.operation === 'PUT' ? entry.value : undefined,
                revision: entry.revision,
              })
            } catch (error) {
              this.components.logger.warn(
                { plugin: id, store: name, err: (error as Error).message },
                'store watch handler failed',
              )
            }
          }
        })().catch(() => {})
      },
    }
  }

  private metrics(id: string): PluginMetrics {
    const prefix = `oe_plugin_${id.replaceAll('-', '_')}_`
    const registry = this.components.registry
    return {
      prefix,
      counter: (name, help) => {
        const full = `${prefix}${name}`
        const existing = registry.getSingleMetric(full)
        return (existing as Counter | undefined) ?? new Counter({ name: full, help, registers: [registry] })
      },
      gauge: (name, help) => {
        const full = `${prefix}${name}`
        const existing = registry.getSingleMetric(full)
        return (existing as Gauge | undefined) ?? new Gauge({ name: full, help, registers: [registry] })
      },
    }
  }

  private facade(entry: Running, logger: Logger): PluginDataPlane {
    const { dataPlane } = this.components
    const id = entry.definition.id
    return {
      publishTelemetry: async (records) => {
        const now = Date.now()
        const checked = records.map((record, index) => {
          try {
            return parseTelemetryRecord(record, now)
          } catch (error) {
            throw new PluginError(id, `telemetry record ${index}: ${(error as Error).message}`)
          }
        })
        await dataPlane.publishTelemetry(checked)
      },
      publishEvent: (kind, rid, type, event) => dataPlane.publishEvent(kind, rid, type, event),
      upsertResource: async (resource) => {
        const { kind, rid, updated: _updated, ...rest } = resource
        await dataPlane.upsertResource(parseResource(kind, rid, rest))
      },
      getResource: (kind, rid) => dataPlane.getResource(kind, rid),
      onControl: (selector, handler) => {
        entry.setups.push(this.consumeControl(entry, logger, selector, handler))
      },
      publishControl: async (kind, rid, command, payload) => {
        if (!isResourceKind(kind) || !isResourceId(rid) || !SUBJECT_TOKEN.test(command))
          throw new PluginError(id, `control ${kind}.${rid}.${command}: not a valid kind, rid and command`)
        await dataPlane.publishConfirmed([
          { subject: subjects.control(kind, rid, command), payload: encodeCbor(payload) },
        ])
      },
      readTelemetry: (kind, rid, quantities, options) => this.readTelemetry(kind, rid, quantities, options),
      mqtt: this.mqtt(id),
      onEvent: (selector, handler) => {
        entry.setups.push(this.consumeEvents(entry, logger, selector, handler))
      },
      watchResources: (kinds, handler, options) =>
        this.watchResources(entry, logger, kinds, handler, options),
      authorizeToken: (request, options) => this.authorizeToken(request, options),
      answerTokenAuthorization: (handler) => this.answerTokenAuthorization(entry, logger, handler),
    }
  }

  /** A plugin's MQTT: topics under `<id>/` only, so no client reaches the node's own subjects. */
  private mqtt(id: string): PluginMqtt {
    const { dataPlane } = this.components
    const mqtt = this.components.mqtt
    const own = (topic: string) => topic === `${id}/#` || topic.startsWith(`${id}/`)
    return {
      url: mqtt?.url,
      ...(mqtt?.unavailable ? { unavailable: mqtt.unavailable } : {}),
      publish: (topic, payload) => {
        if (!own(topic)) throw new PluginError(id, `MQTT topic '${topic}' is not under '${id}/'`)
        dataPlane.connection.publish(mqttTopicToSubject(topic), payload)
      },
      authorize: (decide) => {
        this.mqttDeciders.push({ id, decide })
        mqtt?.callout?.setAuthorizer((request) => this.authorizeMqtt(request))
      },
    }
  }

  /** The first plugin that grants a client decides; a grant outside its own topics is refused. */
  private async authorizeMqtt(
    request: Parameters<MqttAuthorizer>[0],
  ): Promise<Awaited<ReturnType<MqttAuthorizer>>> {
    let refusal = 'no plugin knows this client'
    for (const { id, decide } of this.mqttDeciders) {
      const decision = await decide({
        username: request.username,
        password: request.password,
        clientId: request.clientId,
      }).catch((error: Error) => ({ refused: error.message }))
      if ('refused' in decision) {
        refusal = decision.refused
        continue
      }
      const outside = decision.subscribe.filter((topic) => topic !== `${id}/#` && !topic.startsWith(`${id}/`))
      if (outside.length > 0) {
        this.components.logger.error({ plugin: id, outside }, 'plugin granted MQTT topics outside its own')
        return { refused: 'misconfigured grant' }
      }
      return decision
    }
    return { refused: refusal }
  }

  /** Readings of one resource from OE_TEL, through an ordered consumer that starts near `since`. */
  private async readTelemetry(
    kind: ResourceKind,
    rid: string,
    quantities: readonly string[],
    options: { since: number; by?: 'stamp' | 'arrival'; max?: number; signal?: AbortSignal },
  ): Promise<TelemetryRecord[]> {
    const byArrival = options.by === 'arrival'
    if (!isResourceKind(kind) || !isResourceId(rid) || quantities.some((q) => !SUBJECT_TOKEN.test(q)))
      return []
    const { dataPlane } = this.components
    const max = options.max ?? 100_000
    const filters = quantities.map((q) => subjects.telemetry(kind, rid, q))
    const info = await dataPlane.manager.streams
      .info('OE_TEL', { subjects_filter: subjects.telemetry(kind, rid, '*') })
      .catch(() => undefined)
    // With a subjects filter the stream tells how many messages each matching subject has.
    const present = Object.keys(info?.state.subjects ?? {})
    if (!filters.some((filter) => present.includes(filter))) return []
    // Readings arrive after they are taken: start an hour before `since` by arrival time.
    const consumer = await dataPlane.jetstream.consumers.get('OE_TEL', {
      filter_subjects: filters,
      deliver_policy: DeliverPolicy.StartTime,
      opt_start_time: new Date(Math.max(0, options.since - (byArrival ? 0 : 3_600_000))).toISOString(),
    })
    try {
      return await this.readOrdered(consumer, kind, rid, byArrival, max, options)
    } finally {
      // Gone at once: left alone, each read's consumer would live on for minutes on the server
      // (a plugin reading per site per post kept thousands, and the server's memory with them).
      void consumer.delete().catch(() => {})
    }
  }

  private async readOrdered(
    consumer: Consumer,
    kind: ResourceKind,
    rid: string,
    byArrival: boolean,
    max: number,
    options: { since: number; signal?: AbortSignal },
  ): Promise<TelemetryRecord[]> {
    const out: TelemetryRecord[] = []
    // Nothing from the start time on: done (consume would wait for new messages).
    if ((await consumer.info()).num_pending === 0) return out
    const messages = await consumer.consume({ max_messages: 1000 })
    const timeout = AbortSignal.timeout(10_000)
    const onAbort = () => void closeConsumerMessages(messages)
    timeout.addEventListener('abort', onAbort, { once: true })
    options.signal?.addEventListener('abort', onAbort, { once: true })
    try {
      for await (const msg of messages) {
        const q = msg.subject.slice(msg.subject.lastIndexOf('.') + 1)
        try {
          const payload = decodeCbor(msg.data) as { v: number; t: number; u?: string }
          if (
            typeof payload.v === 'number' &&
            typeof payload.t === 'number' &&
            (byArrival || payload.t >= options.since)
          )
            out.push({ kind, rid, q, v: payload.v, t: payload.t })
        } catch {
          // Not CBOR: not a reading.
        }
        if (msg.info.pending === 0 || out.length >= max) break
      }
    } finally {
      timeout.removeEventListener('abort', onAbort)
      options.signal?.removeEventListener('abort', onAbort)
      await closeConsumerMessages(messages)
    }
    return out.sort((a, b) => a.t - b.t).slice(0, max)
  }

  private async consumeControl(
    entry: Running,
    logger: Logger,
    selector: ControlSelector,
    handler: (message: ControlMessage) => Promise<void>,
  ): Promise<void> {
    const { dataPlane } = this.components
    const name =
      `oe-plugin-${entry.definition.id}-${selector.kinds.join('-')}-${selector.commands.join('-')}`.slice(
        0,
        120,
      )
    const filters = selector.kinds.flatMap((kind) =>
      selector.commands.map((command) => `oe.ctl.${kind}.*.${command}`),
    )
    const config = {
      durable_name: name,
      filter_subjects: filters,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.New,
      ack_wait: nanos(30_000),
    }
    await dataPlane.manager.consumers.add('OE_CTL', config).catch(async () => {
      await dataPlane.manager.consumers.update('OE_CTL', name, { filter_subjects: filters })
    })
    const consumer = await dataPlane.jetstream.consumers.get('OE_CTL', name)
    const messages = await consumer.consume({ max_messages: 64 })
    entry.closers.push(() => closeConsumerMessages(messages))
    // The subscription exists from here on; handling runs in the background.
    void this.handleControl(messages, logger, handler).catch((error: Error) => {
      logger.error({ err: error.message }, 'control subscription failed')
    })
  }

  private async handleControl(
    messages: AsyncIterable<JsMsg>,
    logger: Logger,
    handler: (message: ControlMessage) => Promise<void>,
  ): Promise<void> {
    for await (const msg of messages) {
      const [, , kind, rid, command] = msg.subject.split('.')
      let payload: Record<string, unknown>
      try {
        payload = decodeCbor(msg.data) as Record<string, unknown>
      } catch {
        logger.warn({ subject: msg.subject }, 'control command is not CBOR: dropped')
        msg.term()
        continue
      }
      const agreement = msg.headers?.get('Oe-Agreement')
      const from = msg.headers?.get('Oe-From')
      try {
        await handler({
          kind: kind as ResourceKind,
          rid: rid!,
          command: command!,
          payload,
          ...(agreement ? { agreement } : {}),
          ...(from ? { from } : {}),
        })
        msg.ack()
      } catch (error) {
        logger.warn(
          { subject: msg.subject, err: (error as Error).message },
          'control command failed: will retry',
        )
        msg.nak(5_000)
      }
    }
  }

  /** Events of a selector through a durable consumer of OE_EVT (one per plugin and selector). */
  private async consumeEvents(
    entry: Running,
    logger: Logger,
    selector: EventSelector,
    handler: (message: EventMessage) => Promise<void>,
  ): Promise<void> {
    const { dataPlane } = this.components
    const id = entry.definition.id
    if (
      selector.kinds.some((kind) => !isResourceKind(kind)) ||
      selector.types.some((type) => !SUBJECT_TOKEN.test(type))
    )
      throw new PluginError(id, `event selector ${JSON.stringify(selector)}: not valid kinds and types`)
    const filters = selector.kinds.flatMap((kind) => selector.types.map((type) => `oe.evt.${kind}.*.${type}`))
    // Names are tokens; a digest keeps long selectors apart after the cut.
    const digest = Bun.hash(filters.join(',')).toString(36)
    const name = `oe-plugin-${id}-evt-${selector.kinds.join('-')}-${selector.types.join('-')}`.slice(0, 100)
    const durable = `${name}-${digest}`
    const config = {
      durable_name: durable,
      filter_subjects: filters,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.New,
      ack_wait: nanos(30_000),
    }
    await dataPlane.manager.consumers.add('OE_EVT', config).catch(async () => {
      await dataPlane.manager.consumers.update('OE_EVT', durable, { filter_subjects: filters })
    })
    const consumer = await dataPlane.jetstream.consumers.get('OE_EVT', durable)
    const messages = await consumer.consume({ max_messages: 64 })
    entry.closers.push(() => closeConsumerMessages(messages))
    void (async () => {
      for await (const msg of messages) {
        const [, , kind, rid, type] = msg.subject.split('.')
        let payload: Record<string, unknown>
        try {
          const decoded = decodeCbor(msg.data)
          payload =
            decoded !== null && typeof decoded === 'object' ? (decoded as Record<string, unknown>) : {}
        } catch {
          msg.term()
          continue
        }
        try {
          await handler({ kind: kind as ResourceKind, rid: rid!, type: type!, payload })
          msg.ack()
        } catch (error) {
          logger.warn(
            { subject: msg.subject, err: (error as Error).message },
            'event handling failed: will retry',
          )
          msg.nak(5_000)
        }
      }
    })().catch((error: Error) => logger.error({ err: error.message }, 'event subscription failed'))
  }

  /** Standing data of some kinds: what is there now, then every change (KV watch). */
  private async watchResources(
    entry: Running,
    logger: Logger,
    kinds: readonly ResourceKind[],
    handler: (change: ResourceChange) => Promise<void> | void,
    options: { signal?: AbortSignal } = {},
  ): Promise<void> {
    const id = entry.definition.id
    if (kinds.length === 0 || kinds.some((kind) => !isResourceKind(kind)))
      throw new PluginError(id, `watchResources: not valid kinds: ${kinds.join(', ')}`)
    const kv: KV = await new Kvm(this.components.dataPlane.jetstream).open(RESOURCES_BUCKET)
    const filters = kinds.map((kind) => `${kind}.*`)
    const change = (key: string, value: Uint8Array | undefined): ResourceChange => {
      const dot = key.indexOf('.')
      const resource = value && value.length > 0 ? (decodeCbor(value) as Resource) : undefined
      return { kind: key.slice(0, dot) as ResourceKind, rid: key.slice(dot + 1), resource }
    }
    // Watch first, then list: a change during the listing is handed over twice, never missed.
    const watcher = await kv.watch({ key: filters, include: KvWatchInclude.UpdatesOnly })
    const stop = async () => {
      watcher.stop()
    }
    entry.closers.push(stop)
    options.signal?.addEventListener('abort', () => void stop(), { once: true })
    const keys: string[] = []
    for await (const key of await kv.keys(filters)) keys.push(key)
    for (let i = 0; i < keys.length; i += 64) {
      const chunk = keys.slice(i, i + 64)
      const entries = await Promise.all(chunk.map((key) => kv.get(key)))
      for (const [index, item] of entries.entries()) {
        if (item?.operation === 'PUT') await handler(change(chunk[index]!, item.value))
      }
    }
    void (async () => {
      for await (const item of watcher) {
        try {
          await handler(change(item.key, item.operation === 'PUT' ? item.value : undefined))
        } catch (error) {
          logger.warn({ key: item.key, err: (error as Error).message }, 'standing-data change not handled')
        }
      }
    })().catch((error: Error) => logger.error({ err: error.message }, 'standing-data watch failed'))
  }

  /** Core NATS request to whoever answers `oe.auth.token` (queue group: one answer). */
  private async authorizeToken(
    request: TokenAuthorizationRequest,
    options: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<TokenAuthorization> {
    options.signal?.throwIfAborted()
    try {
      const reply = await this.components.dataPlane.connection.request(
        TOKEN_AUTH_SUBJECT,
        encodeCbor(request),
        {
          timeout: options.timeoutMs ?? 5_000,
        },
      )
      const answer = decodeCbor(reply.data) as TokenAuthorization
      return typeof answer?.status === 'string' ? answer : { status: 'Unknown' }
    } catch {
      // No answerer, or none in time.
      return { status: 'Unknown' }
    }
  }

  private answerTokenAuthorization(
    entry: Running,
    logger: Logger,
    handler: (request: TokenAuthorizationRequest) => Promise<TokenAuthorization>,
  ): void {
    const subscription = this.components.dataPlane.connection.subscribe(TOKEN_AUTH_SUBJECT, {
      queue: 'oe-auth',
      callback: (error, msg) => {
        if (error) return
        void (async () => {
          let answer: TokenAuthorization = { status: 'Unknown' }
          try {
            const request = decodeCbor(msg.data) as TokenAuthorizationRequest
            if (
              typeof request?.token === 'string' &&
              isResourceKind(request.kind) &&
              isResourceId(request.rid)
            )
              answer = await handler(request)
          } catch (failure) {
            logger.warn({ err: (failure as Error).message }, 'token authorisation failed')
          }
          msg.respond(encodeCbor({ ...answer, by: answer.by ?? entry.definition.id }))
        })()
      },
    })
    entry.closers.push(async () => subscription.unsubscribe())
  }
}

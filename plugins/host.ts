/**
 * The plugin host: validates each enabled plugin's config slice, builds its context (scoped
 * logger, metrics, data folder, signal, data-plane facade), starts plugins in order and stops
 * them in reverse, and reports their readiness and status.
 */
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { AckPolicy, DeliverPolicy, type JsMsg } from '@nats-io/jetstream'
import { nanos } from '@nats-io/nats-core'
import { Counter, Gauge, type Registry } from 'prom-client'
import {
  closeConsumerMessages,
  type DataPlane,
  decodeCbor,
  type Logger,
  parseResource,
  parseTelemetryRecord,
  type ResourceKind,
} from '../data-plane/index.ts'
import type {
  ControlMessage,
  ControlSelector,
  PluginDataPlane,
  PluginDefinition,
  PluginInstance,
  PluginMetrics,
} from './api.ts'
import { PluginConfigError, PluginError } from './errors.ts'

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
}

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
    }
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
}

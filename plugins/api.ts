/**
 * The plugin API (ARCHITECTURE §8). A plugin is `definePlugin({ id, version, configSchema,
 * create(ctx) })`. Its context gives it a scoped logger, a metrics prefix, its own config slice
 * and data folder, an AbortSignal, and a narrow data-plane facade. A plugin never sees NATS
 * credentials, keys, or other plugins.
 *
 * @example
 * export const echo = definePlugin({
 *   id: 'echo',
 *   version: '1.0.0',
 *   configSchema: z.object({ rid: z.string() }),
 *   create: (ctx) => ({
 *     start: () => ctx.dataPlane.publishTelemetry([{ kind: 'meter', rid: ctx.config.rid, q: 'power', v: 1, t: Date.now() }]),
 *   }),
 * })
 */
import type { z } from 'zod'
import type { Logger, Resource, ResourceKind, TelemetryRecord } from '../data-plane/index.ts'

export interface ControlMessage {
  kind: ResourceKind
  rid: string
  command: string
  /** The decoded CBOR payload, e.g. `limit_power` → `{ v, u, until, source }`. */
  payload: Record<string, unknown>
  /** Agreement and peer when the command came from another organisation. */
  agreement?: string
  from?: string
}

export interface ControlSelector {
  kinds: ResourceKind[]
  commands: string[]
}

/** What a plugin may do on the data plane. */
export interface PluginDataPlane {
  /** Validated and stored (JetStream-confirmed) before it resolves; invalid records throw. */
  publishTelemetry(records: readonly TelemetryRecord[]): Promise<void>
  publishEvent(kind: ResourceKind, rid: string, type: string, event: Record<string, unknown>): Promise<void>
  upsertResource(resource: Omit<Resource, 'updated'> & { updated?: number }): Promise<void>
  getResource(kind: ResourceKind, rid: string): Promise<Resource | undefined>
  /**
   * Receive control commands for these kinds and commands (`oe.ctl.<kind>.<rid>.<command>`),
   * at least once, in order, after a restart too. The handler's promise settles the command:
   * resolve to acknowledge it, reject to have it redelivered.
   */
  onControl(selector: ControlSelector, handler: (message: ControlMessage) => Promise<void>): void
}

export interface PluginMetrics {
  /** Prefix for this plugin's metric names: `oe_plugin_<id>_`. */
  prefix: string
  counter(name: string, help: string): { inc(value?: number): void }
  gauge(name: string, help: string): { set(value: number): void }
}

export interface PluginContext<Config> {
  id: string
  logger: Logger
  config: Config
  /** `<data-dir>/plugins/<id>/`, created 0700. */
  dataDir: string
  /** Aborted when the node stops the plugin. */
  signal: AbortSignal
  dataPlane: PluginDataPlane
  metrics: PluginMetrics
}

/** What `create` returns: a running plugin. */
export interface PluginInstance {
  start?(options: { signal?: AbortSignal }): Promise<void>
  stop?(): Promise<void>
  /** Part of /readyz. */
  ready?(): boolean
  /** Shown in `oe-node status` (e.g. connected stations). */
  status?(): Record<string, unknown>
  /** Admin actions for operators (`POST /v1/plugins/<id>/actions/<name>`). */
  actions?: Record<string, (input: Record<string, unknown>) => Promise<unknown>>
}

export interface PluginDefinition<Schema extends z.ZodType = z.ZodType> {
  id: string
  version: string
  description: string
  configSchema: Schema
  create(ctx: PluginContext<z.output<Schema>>): PluginInstance | Promise<PluginInstance>
}

export function definePlugin<Schema extends z.ZodType>(
  definition: PluginDefinition<Schema>,
): PluginDefinition<Schema> {
  if (!/^[a-z][a-z0-9-]{0,31}$/.test(definition.id))
    throw new Error(`plugin id '${definition.id}' is not a valid id`)
  return definition
}

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
  /**
   * Publish a control command on `oe.ctl.<kind>.<rid>.<command>` (stored in OE_CTL before it
   * resolves), as a client plugin does when an outside system (a VTN, a utility server) tells
   * the node to limit a resource. The host always provides it; optional for in-memory harnesses.
   */
  publishControl?(
    kind: ResourceKind,
    rid: string,
    command: string,
    payload: Record<string, unknown>,
  ): Promise<void>
  /**
   * Telemetry the node holds for one resource (stream OE_TEL), readings stamped at or after
   * `since` (epoch ms), oldest first, at most `max` (default 100,000). The host always provides
   * it; optional for in-memory harnesses. With `by: 'arrival'`, `since` is when the node stored
   * the readings instead (what arrived since a previous read, whatever their stamps).
   */
  readTelemetry?(
    kind: ResourceKind,
    rid: string,
    quantities: readonly string[],
    options: { since: number; by?: 'stamp' | 'arrival'; max?: number; signal?: AbortSignal },
  ): Promise<TelemetryRecord[]>
  /**
   * MQTT on the node's own data plane (nats-server's MQTT listener), for plugins that notify
   * outside clients over MQTT. The host always provides it; optional for in-memory harnesses.
   */
  mqtt?: PluginMqtt
  /**
   * Receive events of these kinds and types (`oe.evt.<kind>.<rid>.<type>`, from any plugin or
   * client), at least once, in order, those published while the plugin was down too (a durable
   * consumer per selector, from the first start on). The handler's promise settles the event:
   * resolve to acknowledge it, reject to have it redelivered. The host always provides it;
   * optional for in-memory harnesses.
   */
  onEvent?(selector: EventSelector, handler: (message: EventMessage) => Promise<void>): void
  /**
   * The standing data of these kinds (KV `oe-resources`): resolves once every current resource
   * was handed to `handler`; changes follow as they happen (in order, one at a time) until
   * the plugin stops. A deleted resource comes as `resource: undefined`. The host always
   * provides it; optional for in-memory harnesses.
   */
  watchResources?(
    kinds: readonly ResourceKind[],
    handler: (change: ResourceChange) => Promise<void> | void,
    options?: { signal?: AbortSignal },
  ): Promise<void>
  /**
   * Ask whoever answers token authorisations on the node (e.g. the OCPI plugin, from the
   * tokens eMSPs pushed) whether a driver's token may charge here. Resolves `Unknown` when no
   * one answers in time. For plugins that admit drivers (OCPP Authorize / StartTransaction).
   */
  authorizeToken?(
    request: TokenAuthorizationRequest,
    options?: { timeoutMs?: number; signal?: AbortSignal },
  ): Promise<TokenAuthorization>
  /** Answer token authorisations (one answerer per request when several replicas answer). */
  answerTokenAuthorization?(
    handler: (request: TokenAuthorizationRequest) => Promise<TokenAuthorization>,
  ): void
}

/** An event on `oe.evt.<kind>.<rid>.<type>`, decoded. */
export interface EventMessage {
  kind: ResourceKind
  rid: string
  type: string
  payload: Record<string, unknown>
}

export interface EventSelector {
  kinds: ResourceKind[]
  types: string[]
}

/** A change of standing data; `resource` is undefined when it was deleted. */
export interface ResourceChange {
  kind: ResourceKind
  rid: string
  resource: Resource | undefined
}

/** A driver's token read at a charger (OCPP idTag / idToken), to be authorised. */
export interface TokenAuthorizationRequest {
  token: string
  /** The token's type as the charger gave it (OCPP `ISO14443`, `Central`, … or OCPI `RFID`, …). */
  type?: string
  /** Where: the station or EVSE resource. */
  kind: ResourceKind
  rid: string
}

export interface TokenAuthorization {
  status: 'Accepted' | 'Blocked' | 'Expired' | 'Invalid' | 'Unknown'
  /** The plugin that decided. */
  by?: string
  /** A reference the decider wants on the session (OCPI `authorization_reference`). */
  reference?: string
  /** Until when the answer may be reused, epoch ms. */
  until?: number
}

/** What a connecting MQTT client presented. */
export interface MqttClientCredentials {
  username: string
  password: string
  /** The MQTT client identifier. */
  clientId: string
}

/**
 * A plugin's MQTT topics: `<plugin id>/…`, levels of letters, digits, `_` and `-` (they are
 * NATS subjects with `/` for `.`). MQTT clients only ever subscribe; they publish nothing.
 */
export interface PluginMqtt {
  /** Where MQTT clients connect (`mqtt://HOST:PORT` or `mqtts://`); undefined without a listener. */
  readonly url: string | undefined
  /** Why there is no listener (e.g. the node uses an external NATS), when there is none. */
  readonly unavailable?: string
  /** Publish to this topic's MQTT subscribers (at most once, QoS 0). */
  publish(topic: string, payload: Uint8Array): void
  /**
   * Decide who may connect: answer the topic filters (`<plugin id>/…`, `+` and a final `#`
   * allowed) the client may subscribe to and until when, or a reason to refuse.
   */
  authorize(
    decide: (
      client: MqttClientCredentials,
    ) => Promise<{ subscribe: string[]; expiresAt?: number; name?: string } | { refused: string }>,
  ): void
}

/**
 * A plugin's own key-value bucket on the node's data plane (JetStream KV
 * `oe-plugin-<id>-<name>`), for state that must survive restarts and be shared by replicas.
 * Keys are `[-/_=.a-zA-Z0-9]+` (dots separate tokens, as in NATS subjects); values are bytes.
 */
export interface PluginStore {
  /** The bucket's name on the data plane (for operators; plugins never open it themselves). */
  readonly bucket: string
  get(key: string): Promise<Uint8Array | undefined>
  put(key: string, value: Uint8Array): Promise<void>
  delete(key: string): Promise<void>
  /** Keys present now, optionally matching a filter with NATS wildcards (`events.*`, `a.>`). */
  keys(filter?: string): Promise<string[]>
  // Shared state among replicas of the node (the host always provides these; they are optional
  // only so in-memory harness stores still fit):
  /** The value with its revision, for `update`. */
  getEntry?(key: string): Promise<PluginStoreEntry | undefined>
  /** Store only if the key is absent (or deleted): the new revision, or `undefined` if it exists. */
  create?(key: string, value: Uint8Array): Promise<number | undefined>
  /**
   * Store only if the key is still at `revision` (compare-and-set): the new revision, or
   * `undefined` when another write (another replica's, say) came first.
   */
  update?(key: string, value: Uint8Array, revision: number): Promise<number | undefined>
  /**
   * Follow every change to keys matching `filter` (NATS wildcards; default all) made by any
   * replica, this one's included, in order, until `signal` aborts. With `initial`, the values
   * present now come first. Resolves once the watch is in place.
   */
  watch?(
    filter: string | undefined,
    onChange: (change: PluginStoreChange) => void,
    options?: { signal?: AbortSignal; initial?: boolean },
  ): Promise<void>
}

export interface PluginStoreEntry {
  value: Uint8Array
  revision: number
}

/** A change seen by `PluginStore.watch`: `value` is absent for a delete. */
export interface PluginStoreChange {
  key: string
  value: Uint8Array | undefined
  revision: number
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
  /**
   * Open (creating on first use) this plugin's KV bucket `oe-plugin-<id>-<name>`; `name` is
   * `[a-z0-9][a-z0-9-]{0,31}`. The plugin never sees the NATS connection behind it. The host
   * always provides it; it is optional only so harnesses without a data plane (the compliance
   * suite's in-memory one) still fit.
   */
  store?(name: string): Promise<PluginStore>
  /**
   * Work that must run on one replica of the node at a time (a poller, a registration, the
   * command routing of a station): `work` starts on the replica that takes lease
   * `plugin.<id>.<name>`, and again on another when that one goes (within the lease term, 3 s by
   * default). It must stop when `lease.signal` aborts (the lease was lost, or the plugin stops),
   * and check `lease.valid()` before each step that must not happen twice. `name` is
   * `[a-z0-9][a-z0-9_-]{0,63}` tokens separated by dots. On a node without replicas it simply
   * runs. The host always provides it; optional for in-memory harnesses.
   */
  lease?(name: string, work: (lease: PluginLease) => Promise<void>): PluginLeaseHandle
}

/** A plugin's hold on single-owner work (see `PluginContext.lease`). */
export interface PluginLease {
  /** Aborted when this replica must stop the work. */
  readonly signal: AbortSignal
  /** Rises with each new owner: a stale owner's number is lower (fencing token). */
  readonly fence: number
  /** True while this replica may still do the work. */
  valid(): boolean
}

export interface PluginLeaseHandle {
  /** Whether this replica runs the work now. */
  readonly held: boolean
  /** Stop contending; if held, stop the work and let another replica take it at once. */
  release(): Promise<void>
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

/** What a plugin needs from the node's data plane before it starts (asked before NATS starts). */
export interface PluginNeeds {
  /** nats-server's MQTT listener on `HOST:PORT` (with TLS from these PEM files). */
  mqtt?: { listen: string; tls?: { cert: string; key: string } }
}

export interface PluginDefinition<Schema extends z.ZodType = z.ZodType> {
  id: string
  version: string
  description: string
  configSchema: Schema
  create(ctx: PluginContext<z.output<Schema>>): PluginInstance | Promise<PluginInstance>
  /** What this configuration needs from the data plane (the node provides it when it can). */
  needs?(config: z.output<Schema>): PluginNeeds
}

export function definePlugin<Schema extends z.ZodType>(
  definition: PluginDefinition<Schema>,
): PluginDefinition<Schema> {
  if (!/^[a-z][a-z0-9-]{0,31}$/.test(definition.id))
    throw new Error(`plugin id '${definition.id}' is not a valid id`)
  return definition
}

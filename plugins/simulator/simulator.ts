/**
 * The simulator at run time: upserts the fleet's standing data, steps it every interval on a
 * drift-free schedule and publishes the readings, and obeys `limit_power` on EVSEs and batteries.
 */
import type { Logger, ResourceKind } from '../../data-plane/index.ts'
import type { ControlMessage, PluginDataPlane, PluginInstance, PluginMetrics } from '../api.ts'
import { PluginError } from '../errors.ts'
import type { SimulatorConfig } from './config.ts'
import { parseLimitPower } from './control.ts'
import { Fleet, type FleetOutput, SITE_COMMANDS, type SiteCommand } from './fleet.ts'
import { seededRandom } from './random.ts'

export interface FleetSimulatorComponents {
  dataPlane: PluginDataPlane
  logger: Logger
  metrics: PluginMetrics
  /** Aborted when the node stops the plugin: no timer survives it. */
  signal: AbortSignal
}

const PLUGIN_ID = 'simulator'
/** Standing-data upserts in flight at once at start (100 sites are 600 resources). */
const UPSERT_CONCURRENCY = 16
/** How many missed ticks are made up after a stall before the simulator skips ahead instead. */
const CATCH_UP_TICKS = 5

export class FleetSimulator implements PluginInstance {
  private fleet: Fleet | undefined
  private state: 'created' | 'starting' | 'running' | 'stopped' = 'created'
  private timer: ReturnType<typeof setTimeout> | undefined
  private inFlight: Promise<void> | undefined
  private tickIndex = 0
  private realStart = 0
  private simulatedStart = 0
  private published = 0
  private readonly counters: {
    records: { inc(value?: number): void }
    commands: { inc(value?: number): void }
    skipped: { inc(value?: number): void }
    failures: { inc(value?: number): void }
  }
  readonly actions: NonNullable<PluginInstance['actions']>

  constructor(
    private readonly config: SimulatorConfig,
    private readonly components: FleetSimulatorComponents,
  ) {
    const { metrics, signal } = components
    this.counters = {
      records: metrics.counter('records_published_total', 'Telemetry records the simulator published'),
      commands: metrics.counter('control_commands_total', 'limit_power commands the simulator applied'),
      skipped: metrics.counter('ticks_skipped_total', 'Intervals skipped because publishing fell behind'),
      failures: metrics.counter('publish_failures_total', 'Intervals whose readings could not be published'),
    }
    this.actions = { plug_in: (input) => this.plugIn(input) }
    signal.addEventListener('abort', () => this.halt(), { once: true })
  }

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.state !== 'created') return
    if (this.components.signal.aborted) return
    this.state = 'starting'
    const { dataPlane } = this.components
    this.realStart = Date.now()
    this.simulatedStart = this.config.start === 'now' ? this.realStart : this.config.start
    const fleet = new Fleet(
      { sites: this.config.sites, evsesPerSite: this.config.evses_per_site, start: this.simulatedStart },
      { random: seededRandom(this.config.seed) },
    )
    this.fleet = fleet
    const resources = fleet.standingData()
    for (let i = 0; i < resources.length; i += UPSERT_CONCURRENCY) {
      options.signal?.throwIfAborted()
      if (this.halted) return
      await Promise.all(resources.slice(i, i + UPSERT_CONCURRENCY).map((r) => dataPlane.upsertResource(r)))
    }
    dataPlane.onControl({ kinds: ['evse', 'battery'], commands: ['limit_power'] }, (message) =>
      this.control(message),
    )
    dataPlane.onControl({ kinds: ['site'], commands: [...SITE_COMMANDS] }, (message) =>
      this.siteControl(message),
    )
    // The first readings at once (a broken data plane fails the start), then every interval.
    await this.publish(fleet.step(this.simulatedStart, Date.now()))
    if (this.halted) return
    this.state = 'running'
    this.components.logger.info(
      { sites: this.config.sites, resources: resources.length, intervalMs: this.config.interval },
      'simulating',
    )
    this.schedule()
  }

  async stop(): Promise<void> {
    this.halt()
    await this.inFlight
  }

  ready(): boolean {
    return this.state === 'running'
  }

  status(): { sites: number; resources: number; published: number } {
    return {
      sites: this.config.sites,
      resources: this.config.sites * (4 + this.config.evses_per_site),
      published: this.published,
    }
  }

  private get halted(): boolean {
    return this.state === 'stopped'
  }

  private halt(): void {
    this.state = 'stopped'
    clearTimeout(this.timer)
    this.timer = undefined
  }

  /**
   * Next tick at `start + k × interval`. After a short stall (GC, a busy moment) the missed ticks
   * run back to back, so the series has no gaps; when publishing falls further behind than
   * CATCH_UP_TICKS, the simulator skips to the current tick rather than pile up work.
   */
  private schedule(): void {
    if (this.halted) return
    const { interval } = this.config
    this.tickIndex += 1
    const now = Date.now()
    const current = Math.floor((now - this.realStart) / interval)
    if (current - this.tickIndex > CATCH_UP_TICKS) {
      this.counters.skipped.inc(current - this.tickIndex)
      this.tickIndex = current
    }
    const delay = Math.max(0, this.realStart + this.tickIndex * interval - now)
    this.timer = setTimeout(() => {
      this.inFlight = this.tick().finally(() => {
        this.inFlight = undefined
        this.schedule()
      })
    }, delay)
  }

  private async tick(): Promise<void> {
    if (this.halted || !this.fleet) return
    const t = this.simulatedStart + this.tickIndex * this.config.interval
    try {
      await this.publish(this.fleet.step(t, Date.now()))
    } catch (error) {
      this.counters.failures.inc()
      this.components.logger.warn({ err: (error as Error).message, t }, 'readings not published')
    }
  }

  private async publish(output: FleetOutput): Promise<void> {
    if (this.halted) return
    const { dataPlane } = this.components
    if (output.records.length > 0) {
      await dataPlane.publishTelemetry(output.records)
      this.published += output.records.length
      this.counters.records.inc(output.records.length)
    }
    if (this.halted) return
    await Promise.all(
      output.events.map(({ kind, rid, type, event }) => dataPlane.publishEvent(kind, rid, type, event)),
    )
  }

  /** `limit_power` on an EVSE or battery: clamp |power| until `until`, report it as telemetry and event. */
  private async control(message: ControlMessage): Promise<void> {
    // Left unacknowledged, the command is redelivered to the next run.
    if (this.halted || !this.fleet) throw new PluginError(PLUGIN_ID, 'is stopped')
    const target = this.fleet.controllable(message.kind, message.rid)
    if (!target) {
      this.components.logger.debug({ kind: message.kind, rid: message.rid }, 'command for another resource')
      return
    }
    const now = Date.now()
    const t = now + this.simulatedStart - this.realStart
    const origin = {
      ...(message.agreement ? { agreement: message.agreement } : {}),
      ...(message.from ? { from: message.from } : {}),
    }
    const parsed = parseLimitPower(message.payload, now)
    if (!parsed.ok) {
      this.components.logger.warn({ rid: message.rid, reason: parsed.reason }, 'limit_power rejected')
      await this.publishEvent(message.kind, message.rid, 'limit_rejected', {
        command: message.command,
        reason: parsed.reason,
        t,
        ...origin,
      })
      return
    }
    const { limit } = parsed
    const output = this.fleet.applyLimit(target, limit, t)
    this.counters.commands.inc()
    this.components.logger.info(
      { kind: target.kind, rid: target.rid, limitW: limit.w, until: limit.until, source: limit.source },
      'power limit applied',
    )
    await this.publish(output)
    await this.publishEvent(target.kind, target.rid, 'limit_applied', {
      command: 'limit_power',
      v: limit.w,
      u: 'W',
      ...(limit.until !== undefined ? { until: limit.until } : {}),
      ...(limit.source !== undefined ? { source: limit.source } : {}),
      effectiveW: Math.min(limit.w, target.ratedW),
      t,
      ...origin,
    })
  }

  /** Site commands (limit_export, limit_import, limit_generation, limit_load, connect) at the connection point. */
  private async siteControl(message: ControlMessage): Promise<void> {
    if (this.halted || !this.fleet) throw new PluginError(PLUGIN_ID, 'is stopped')
    if (!this.fleet.hasSite(message.rid)) return
    const command = message.command as SiteCommand
    const now = Date.now()
    const t = now + this.simulatedStart - this.realStart
    const { v } = message.payload
    const parsed =
      command === 'connect'
        ? v === 0 || v === 1
          ? parseLimitPower({ ...message.payload, u: 'W' }, now)
          : ({ ok: false, reason: 'v must be 1 (connected) or 0 (disconnected)' } as const)
        : parseLimitPower(message.payload, now)
    if (!parsed.ok) {
      this.components.logger.warn(
        { rid: message.rid, command, reason: parsed.reason },
        'site command rejected',
      )
      await this.publishEvent('site', message.rid, 'limit_rejected', { command, reason: parsed.reason, t })
      return
    }
    const { limit } = parsed
    this.fleet.applySiteLimit(message.rid, command, limit)
    this.counters.commands.inc()
    this.components.logger.info(
      { rid: message.rid, command, v: limit.w, until: limit.until },
      'site command applied',
    )
    await this.publishEvent('site', message.rid, 'limit_applied', {
      command,
      v: limit.w,
      u: command === 'connect' ? '1' : 'W',
      ...(limit.until !== undefined ? { until: limit.until } : {}),
      ...(limit.source !== undefined ? { source: limit.source } : {}),
      t,
    })
  }

  private async publishEvent(
    kind: ResourceKind,
    rid: string,
    type: string,
    event: Record<string, unknown>,
  ): Promise<void> {
    if (this.halted) return
    await this.components.dataPlane.publishEvent(kind, rid, type, event)
  }

  /** Operator action `plug_in` `{ rid, energyWh?, hours? }`: a car arrives at an EVSE now. */
  private async plugIn(input: Record<string, unknown>): Promise<unknown> {
    if (!this.fleet || this.state !== 'running') throw new PluginError(PLUGIN_ID, 'is not running')
    const { rid, energyWh = 20_000, hours = 4 } = input
    const evse = typeof rid === 'string' ? this.fleet.controllable('evse', rid) : undefined
    if (evse?.kind !== 'evse')
      throw new PluginError(PLUGIN_ID, `plug_in: rid '${String(rid)}' is not a simulated EVSE`)
    if (typeof energyWh !== 'number' || !(energyWh > 0 && energyWh <= 200_000))
      throw new PluginError(PLUGIN_ID, 'plug_in: energyWh must be a number in (0, 200000]')
    if (typeof hours !== 'number' || !(hours > 0 && hours <= 48))
      throw new PluginError(PLUGIN_ID, 'plug_in: hours must be a number in (0, 48]')
    const t = Date.now() + this.simulatedStart - this.realStart
    const output = this.fleet.plugIn(evse, t, energyWh, hours)
    await this.publish(output)
    return { rid, session: evse.session?.id ?? null }
  }
}

/**
 * The VEN: follows one VTN. Each cycle (every `poll_interval`, stretched by a VTN's
 * Retry-After, backing off while the VTN is away) it makes sure its ven object and its resources
 * exist on the VTN, then reads the events it may see. Between polls a timer wakes it at every
 * moment an interval (or sub-interval) starts or ends, so what applies is acted on at the right
 * time, from the events last read, also while the VTN is unreachable. With notifications
 * (ven-notifications.ts) an event the VTN notifies is taken in and acted on at once, and the
 * polls are a safety net.
 *
 * An event applies to a resource when it has no targets, or shares one with the resource's or
 * the ven's targets (as the VTN granted them). What an event's payloads become on the node, per
 * resource (the config maps VTN resource names to `<kind>.<rid>`):
 * - IMPORT_CAPACITY_LIMIT, EXPORT_CAPACITY_LIMIT → `oe.ctl.<kind>.<rid>.limit_power`
 *   `{v (W), u: "W", until, source: "openadr:<eventID>", direction}` (units from the event's
 *   payload descriptor; kW when none), sent when the value starts applying; `until` is when it
 *   stops (none for P9999Y). Among events giving the same payload type, the lowest `priority`
 *   number wins.
 * - PRICE, EXPORT_PRICE and the other price types → event `price`; SIMPLE → event
 *   `demand_level`; any other payload type → event `openadr_signal`; each `{type, v, start, end,
 *   eventID, …}` when the value starts applying.
 * Reports follow the events' reportDescriptors (startInterval, numIntervals, historical,
 * frequency, repeat; frequency 0 is ad hoc: at once), from the node's telemetry: DEMAND (mean
 * `power`, kW), USAGE (kWh from the `energy_import` register, else from `power`),
 * STORAGE_CHARGE_LEVEL (last `soc`, as a PERCENT fraction), SETPOINT (the limit applied, kW).
 *
 * Replicas: when several replicas of the node run this plugin, one of them at a time (the
 * holder of lease `plugin.openadr-ven.ven`) follows the VTN: it polls, keeps the notifier,
 * registers, reports and publishes; the others stand by (ready, `role: "standby"`). A new owner
 * resumes from the store: the events (with their first reading times and offsets), the values
 * already acted on and the reports already sent, so nothing is commanded or reported twice.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import type { Logger, ResourceKind, TelemetryRecord } from '../../data-plane/index.ts'
import type { PluginDataPlane, PluginLease, PluginLeaseHandle, PluginMetrics, PluginStore } from '../api.ts'
import { VtnClient } from './client.ts'
import { isoString } from './codec.ts'
import { DEFAULT_POLL_INTERVAL, parseListen, splitNodeResource, type VenConfig } from './config.ts'
import { OpenAdrError, VenStandbyError, VtnRequestError } from './errors.ts'
import type { Body } from './model.ts'
import { limitWatts } from './normalise.ts'
import {
  changePoints,
  formatDuration,
  type ResolvedEvent,
  type ResolvedInterval,
  resolveEvent,
  uniformOffset,
  valuesAt,
} from './timing.ts'
import { targetsFromValuesMaps } from './v301.ts'
import { MqttNotifier, type VenNotification, type VenNotifier, WebhookNotifier } from './ven-notifications.ts'

export interface VenInit {
  config: VenConfig
  /**
   * This replica's mark (kept on its own disk): tells a restart of this replica, which re-asserts
   * the values it had acted on, from a takeover of another replica's work, which goes on from them.
   */
  replica?: string
}

export interface VenComponents {
  dataPlane: PluginDataPlane
  logger: Logger
  metrics: PluginMetrics
  store: PluginStore
  /** Single-owner work among the node's replicas (`PluginContext.lease`); without it, this VEN is alone. */
  lease?: (name: string, work: (lease: PluginLease) => Promise<void>) => PluginLeaseHandle
}

/** One stretch of time during which this replica follows the VTN. */
interface Term {
  lease: PluginLease
  /** Aborted when the term ends (lease lost, plugin stopping): in-flight requests stop with it. */
  abort: AbortController
  loop: Promise<void> | undefined
  notifier: VenNotifier | undefined
}

interface Registration {
  venID: string
  venTargets: string[]
  /** VTN resource name → { id, targets }. */
  resources: Record<string, { id: string; targets: string[] }>
}

interface KnownEvent {
  event: Body
  /** When this VEN first read it (for 'do it now' starts) and its randomised start offset. */
  obtained: number
  offset: number | undefined
  resolved: ResolvedEvent
}

interface Applied {
  eventID: string
  value: unknown
  start: number
  end: number
}

/** Applied as kept in the store (JSON has no infinities: an open start or end is left out). */
interface StoredApplied {
  eventID: string
  value: unknown
  start?: number
  end?: number
}

const PRICE_TYPES = new Set([
  'PRICE',
  'EXPORT_PRICE',
  'PRICE_ALTERNATE',
  'GHG',
  'IMPORT_CAPACITY_RESERVATION_FEE',
  'EXPORT_CAPACITY_RESERVATION_FEE',
  'IMPORT_CAPACITY_AVAILABLE_PRICE',
  'EXPORT_CAPACITY_AVAILABLE_PRICE',
])
const LIMIT_TYPES = new Set(['IMPORT_CAPACITY_LIMIT', 'EXPORT_CAPACITY_LIMIT'])
const REPORT_TYPES = new Set(['USAGE', 'DEMAND', 'STORAGE_CHARGE_LEVEL', 'SETPOINT'])
const MAX_BACKOFF_MS = 300_000
/** What an ad hoc report covers: the last five minutes. */
const AD_HOC_WINDOW_MS = 300_000
/** Events kept in the store across restarts (those ending soonest are kept when there are more). */
const MAX_SAVED_EVENTS = 500
const encoder = new TextEncoder()
const decoder = new TextDecoder()

/** When each report of a descriptor is due and which intervals it covers (User Guide §7.5). */
export function reportSchedule(
  descriptor: Body,
  intervals: readonly ResolvedInterval[],
  now: number,
): { index: number; at: number; covers: number[] }[] {
  const count = intervals.length
  const frequency = typeof descriptor.frequency === 'number' ? descriptor.frequency : -1
  // Ad hoc (frequency 0) and report-only events: one report as soon as the event is seen, on
  // what is known then (see sendReport).
  if (count === 0 || frequency === 0) return [{ index: 0, at: now, covers: [] }]
  const historical = descriptor.historical !== false
  const startInterval =
    typeof descriptor.startInterval === 'number' && descriptor.startInterval >= 0
      ? Math.min(descriptor.startInterval, count - 1)
      : historical
        ? count - 1
        : 0
  const span =
    typeof descriptor.numIntervals === 'number' && descriptor.numIntervals > 0
      ? descriptor.numIntervals
      : count
  const step = frequency > 0 ? frequency : span
  const repeat =
    typeof descriptor.repeat === 'number'
      ? descriptor.repeat < 0
        ? count
        : Math.max(1, descriptor.repeat)
      : 1
  const out: { index: number; at: number; covers: number[] }[] = []
  for (let k = 0; k < repeat; k++) {
    const anchor = startInterval + k * step
    if (anchor >= count) break
    const covers: number[] = []
    if (historical) {
      for (let i = Math.max(0, anchor - span + 1); i <= anchor; i++) covers.push(i)
      const end = intervals[anchor]!.end
      out.push({ index: k, at: Number.isFinite(end) ? end : now, covers })
    } else {
      for (let i = anchor; i < Math.min(count, anchor + span); i++) covers.push(i)
      out.push({ index: k, at: intervals[anchor]!.start, covers })
    }
  }
  return out
}

export class Ven {
  private readonly client: VtnClient
  private readonly resources: { name: string; kind: ResourceKind; rid: string }[]
  private registration: Registration | undefined
  private readonly events = new Map<string, KnownEvent>()
  private readonly applied = new Map<string, Applied>()
  private readonly sentReports = new Set<string>()
  /** Targeted events (id|modified) that made this VEN read its grants again. */
  private readonly refreshedFor = new Set<string>()
  private started = false
  /** Set while this replica follows the VTN (holds the lease). */
  private term: Term | undefined
  private handle: PluginLeaseHandle | undefined
  /** Without leases: the plugin's own lifetime stands for the lease. */
  private alone: AbortController | undefined
  /** Settles when the last term's work (loop, evaluation, notifier) has wound down. */
  private ended: Promise<void> = Promise.resolve()
  /** This process (a restart gets a new one). */
  private readonly processRun = randomUUID()
  private timer: ReturnType<typeof setTimeout> | undefined
  private wake: (() => void) | undefined
  private connected = false
  private lastPoll: number | undefined
  private lastError: string | undefined
  private failures = 0
  private cycles = 0
  private evaluating: Promise<void> = Promise.resolve()
  /** Events notified (id → when): a poll that started before is older news about them. */
  private readonly notifiedAt = new Map<string, number>()
  private notifierError: string | undefined
  private readonly pollIntervalS: number
  /** What was last written to the store's `events` (written again only when it changes). */
  private savedEvents = ''
  private savedApplied = ''
  private readonly metric: {
    polls: { inc(value?: number): void }
    failures: { inc(value?: number): void }
    controls: { inc(value?: number): void }
    reports: { inc(value?: number): void }
    notifications: { inc(value?: number): void }
    active: { set(value: number): void }
  }

  constructor(
    private readonly init: VenInit,
    private readonly components: VenComponents,
  ) {
    const { config } = init
    this.client = new VtnClient(
      {
        baseUrl: config.vtn_url,
        version: config.version,
        clientId: config.client_id,
        clientSecret: config.client_secret,
        tokenUrl: config.token_url,
        timeoutMs: config.request_timeout * 1000,
      },
      { logger: components.logger },
    )
    this.pollIntervalS = config.poll_interval ?? DEFAULT_POLL_INTERVAL[config.notifications]
    this.resources = Object.entries(config.resources).map(([name, target]) => ({
      name,
      ...splitNodeResource(target),
    }))
    const { metrics } = components
    this.metric = {
      polls: metrics.counter('polls_total', 'event polls of the VTN'),
      failures: metrics.counter('poll_failures_total', 'VTN cycles that failed (VTN away, refused, …)'),
      controls: metrics.counter(
        'controls_published_total',
        'limit_power commands published from OpenADR events',
      ),
      reports: metrics.counter('reports_sent_total', 'reports sent to the VTN'),
      notifications: metrics.counter(
        'notifications_received_total',
        'event notifications received from the VTN (webhook or MQTT)',
      ),
      active: metrics.gauge('active', 'whether this replica follows the VTN (1) or stands by (0)'),
    }
  }

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.started) return
    options.signal?.throwIfAborted()
    if (!this.components.dataPlane.publishControl || !this.components.dataPlane.readTelemetry)
      this.components.logger.warn(
        {},
        'this data plane cannot take controls or give telemetry: limits and reports are skipped',
      )
    this.started = true
    this.metric.active.set(0)
    if (this.components.lease) {
      // Replicas of this node may all run this plugin: the lease holder follows the VTN.
      this.handle = this.components.lease('ven', (lease) => this.own(lease))
      return
    }
    const alone = new AbortController()
    this.alone = alone
    try {
      await this.activate({ signal: alone.signal, fence: 0, valid: () => !alone.signal.aborted }, options)
    } catch (error) {
      this.started = false
      alone.abort()
      throw error
    }
  }

  /** The lease's work: take over (retrying what fails, e.g. the store) until the lease goes. */
  private async own(lease: PluginLease): Promise<void> {
    const { logger } = this.components
    for (let attempt = 0; this.started && !lease.signal.aborted; attempt++) {
      try {
        if (await this.activate(lease)) logger.info({ fence: lease.fence }, 'this replica follows the VTN')
        return
      } catch (error) {
        if (lease.signal.aborted || !this.started) return
        const waitMs = Math.min(30_000, 1_000 * 2 ** Math.min(attempt, 5))
        logger.warn({ err: (error as Error).message, waitMs }, 'cannot take over the VEN: trying again')
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, waitMs)
          const done = () => {
            clearTimeout(timer)
            resolve()
          }
          lease.signal.addEventListener('abort', done, { once: true })
        })
      }
    }
  }

  /** Begin a term: resume from the store, start the notifier and the cycle (false: the lease went meanwhile). */
  private async activate(lease: PluginLease, options: { signal?: AbortSignal } = {}): Promise<boolean> {
    await this.ended
    if (lease.signal.aborted) return false
    const term: Term = { lease, abort: new AbortController(), loop: undefined, notifier: undefined }
    try {
      await this.loadState()
      if (lease.signal.aborted) return false
      term.notifier = await this.createNotifier()
      await term.notifier?.start(options)
    } catch (error) {
      await term.notifier?.stop().catch(() => {})
      throw error
    }
    if (lease.signal.aborted || !this.started) {
      await term.notifier?.stop().catch(() => {})
      return false
    }
    this.term = term
    this.metric.active.set(1)
    lease.signal.addEventListener('abort', () => this.end(term), { once: true })
    // Events known before (a restart, or the previous owner) apply at once, whether or not the
    // VTN answers now.
    if (this.events.size > 0) void this.evaluate()
    term.loop = this.cycleLoop(term)
    return true
  }

  /** End a term at once: timers cleared, requests aborted; the rest winds down in `ended`. */
  private end(term: Term): void {
    if (this.term !== term) return
    this.term = undefined
    this.metric.active.set(0)
    term.abort.abort()
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
    this.wake?.()
    if (this.started && term.lease.signal.aborted)
      this.components.logger.info({ fence: term.lease.fence }, 'lease gone: this replica stands by')
    this.ended = (async () => {
      await term.loop?.catch(() => {})
      await this.evaluating.catch(() => {})
      await term.notifier?.stop().catch(() => {})
    })()
  }

  /** The notifier of config `notifications` (the webhook's bearer token is kept in the store). */
  private async createNotifier(): Promise<VenNotifier | undefined> {
    const { config } = this.init
    const components = {
      client: this.client,
      logger: this.components.logger,
      onNotification: (notification: VenNotification) => this.notified(notification),
    }
    if (config.notifications === 'mqtt')
      return new MqttNotifier(
        { clientId: config.client_id, connectTimeoutMs: config.request_timeout * 1000 },
        components,
      )
    if (config.notifications !== 'webhook' || !config.webhook_listen) return undefined
    const stored = await this.components.store.get('webhook-token')
    let bearerToken = stored ? decoder.decode(stored) : ''
    if (bearerToken.length < 32) {
      bearerToken = randomBytes(32).toString('base64url')
      await this.components.store.put('webhook-token', encoder.encode(bearerToken))
    }
    const { host, port } = parseListen(config.webhook_listen)!
    return new WebhookNotifier(
      {
        host,
        port,
        url: config.webhook_url,
        bearerToken,
        clientName: config.ven_name,
        version: config.version,
      },
      components,
    )
  }

  /** An event the VTN notified: taken in at once, acted on at once. */
  private notified(notification: VenNotification): void {
    if (!this.term) return
    this.metric.notifications.inc()
    if (notification.objectType !== 'EVENT') {
      // A program changed (or another object): the next poll reads what follows from it.
      this.wake?.()
      return
    }
    const event = notification.object
    const id = String(event.id)
    this.notifiedAt.set(id, Date.now())
    if (notification.operation === 'DELETE') this.events.delete(id)
    else {
      this.upsert(event, Date.now())
      // A target this VEN does not know yet: read its grants (in a full cycle) now.
      if (
        this.targetsOf(event).length > 0 &&
        !this.resources.some((resource) => this.applies(event, resource.name))
      )
        this.wake?.()
    }
    this.components.logger.debug({ eventID: id, operation: notification.operation }, 'event notified')
    void this.evaluate()
  }

  async stop(): Promise<void> {
    if (!this.started) return
    this.started = false
    this.alone?.abort()
    this.alone = undefined
    if (this.term) this.end(this.term)
    const handle = this.handle
    this.handle = undefined
    await handle?.release().catch(() => {})
    await this.ended
  }

  ready(): boolean {
    // The node is ready whether or not the VTN answers, and as a standby replica; status says
    // how the VTN link is, and which replica follows it.
    return this.started
  }

  /**
   * For `oe-node status` and the terminal UI: the VTN link (URL, version, registered, last
   * poll, last error) and the events in force or to come, with what applies now and to which
   * of this node's resources (at most 50, soonest first). `role` says whether this replica
   * follows the VTN (`active`) or stands by (`standby`: only what the config says).
   */
  status(): Record<string, unknown> {
    const now = Date.now()
    const { config } = this.init
    if (!this.term)
      return {
        role: 'standby',
        vtn: config.vtn_url,
        openadrVersion: config.version,
        venName: config.ven_name,
        resources: this.resources.length,
        notifications: { mode: config.notifications, pollInterval: this.pollIntervalS },
      }
    const active = [...this.events.values()]
      .filter((known) => known.resolved.end > now)
      .sort((a, b) => a.resolved.start - b.resolved.start)
      .slice(0, 50)
      .map((known) => ({
        id: String(known.event.id),
        ...(typeof known.event.eventName === 'string' ? { name: known.event.eventName } : {}),
        ...(typeof known.event.programID === 'string' ? { programID: known.event.programID } : {}),
        start: known.resolved.start,
        ...(Number.isFinite(known.resolved.end) ? { end: known.resolved.end } : {}),
        resources: this.resources
          .filter((resource) => this.applies(known.event, resource.name))
          .map((resource) => resource.name),
        now: valuesAt(known.resolved, now).map((value) => ({ type: value.type, value: value.value })),
      }))
    return {
      role: 'active',
      vtn: this.init.config.vtn_url,
      // `version` is the plugin's own (the host sets it).
      openadrVersion: this.init.config.version,
      venName: this.init.config.ven_name,
      connected: this.connected,
      registered: this.registration !== undefined,
      ...(this.registration ? { venID: this.registration.venID } : {}),
      resources: this.resources.length,
      events: this.events.size,
      activeEvents: active,
      notifications: {
        mode: this.init.config.notifications,
        pollInterval: this.pollIntervalS,
        ...this.term.notifier?.status(),
        ...(this.notifierError ? { lastError: this.notifierError } : {}),
      },
      ...(this.lastPoll ? { lastPoll: this.lastPoll } : {}),
      ...(this.lastError ? { lastError: this.lastError } : {}),
    }
  }

  // ---- state that survives restarts --------------------------------------------------------

  /** Resume from the store (what this replica held in memory may be stale: another may have followed since). */
  private async loadState(): Promise<void> {
    this.registration = undefined
    this.events.clear()
    this.applied.clear()
    this.sentReports.clear()
    this.refreshedFor.clear()
    this.notifiedAt.clear()
    this.savedEvents = ''
    this.savedApplied = ''
    this.cycles = 0
    this.failures = 0
    this.connected = false
    this.lastError = undefined
    this.notifierError = undefined
    const read = async (key: string) => {
      const value = await this.components.store.get(key)
      return value ? JSON.parse(decoder.decode(value)) : undefined
    }
    const registration = (await read('registration')) as
      | (Registration & { vtn?: string; venName?: string })
      | undefined
    if (
      registration &&
      registration.vtn === this.init.config.vtn_url &&
      registration.venName === this.init.config.ven_name
    )
      this.registration = registration
    for (const key of ((await read('reports')) as string[] | undefined) ?? []) this.sentReports.add(key)
    // Events keep the time this VEN first read them (and their random offset), so a restart
    // moves no 'do it now' start and draws no new offset.
    const saved = (await read('events')) as
      | { vtn?: string; events?: { event: Body; obtained: number; offset?: number }[] }
      | undefined
    if (saved?.vtn === this.init.config.vtn_url && Array.isArray(saved.events)) {
      for (const { event, obtained, offset } of saved.events) {
        if (typeof event?.id !== 'string' || typeof obtained !== 'number') continue
        let drawn = offset
        const resolved = resolveEvent(event as never, obtained, (range) => {
          drawn ??= uniformOffset(range)
          return drawn
        })
        this.events.set(event.id, { event, obtained, offset: drawn, resolved })
      }
    }
    // What was acted on: a replica taking over (or this process taking its lease back) goes on
    // from it, as it is in force on the data plane. A restart of the replica that acted re-asserts
    // it instead, as a single node always did (what it drives may have restarted with it).
    const applied = (await read('applied')) as
      | { vtn?: string; replica?: string; run?: string; applied?: [string, StoredApplied][] }
      | undefined
    const restarted = applied?.replica === (this.init.replica ?? '') && applied?.run !== this.processRun
    if (applied?.vtn === this.init.config.vtn_url && !restarted && Array.isArray(applied.applied)) {
      for (const [key, value] of applied.applied)
        this.applied.set(key, {
          eventID: value.eventID,
          value: value.value,
          start: value.start ?? Number.NEGATIVE_INFINITY,
          end: value.end ?? Number.POSITIVE_INFINITY,
        })
    }
  }

  /** The values acted on, when they changed since last written. */
  private async saveApplied(): Promise<void> {
    const text = JSON.stringify({
      vtn: this.init.config.vtn_url,
      replica: this.init.replica ?? '',
      run: this.processRun,
      applied: [...this.applied].map(([key, value]) => [
        key,
        {
          eventID: value.eventID,
          value: value.value,
          ...(Number.isFinite(value.start) ? { start: value.start } : {}),
          ...(Number.isFinite(value.end) ? { end: value.end } : {}),
        },
      ]),
    })
    if (text === this.savedApplied) return
    await this.components.store.put('applied', encoder.encode(text))
    this.savedApplied = text
  }

  /** The events not yet over, when they changed since last written. */
  private async saveEvents(now: number): Promise<void> {
    const events = [...this.events.values()]
      .filter((known) => known.resolved.end > now)
      .sort((a, b) => a.resolved.end - b.resolved.end)
      .slice(0, MAX_SAVED_EVENTS)
      .map((known) => ({
        event: known.event,
        obtained: known.obtained,
        ...(known.offset !== undefined ? { offset: known.offset } : {}),
      }))
    const text = JSON.stringify({ vtn: this.init.config.vtn_url, events })
    if (text === this.savedEvents) return
    await this.components.store.put('events', encoder.encode(text))
    this.savedEvents = text
  }

  private async saveRegistration(): Promise<void> {
    await this.components.store.put(
      'registration',
      encoder.encode(
        JSON.stringify({
          ...this.registration,
          vtn: this.init.config.vtn_url,
          venName: this.init.config.ven_name,
        }),
      ),
    )
  }

  private async saveReports(): Promise<void> {
    const keys = [...this.sentReports].slice(-5000)
    await this.components.store.put('reports', encoder.encode(JSON.stringify(keys)))
  }

  // ---- the cycle ----------------------------------------------------------------------------

  private async cycleLoop(term: Term): Promise<void> {
    const { logger } = this.components
    while (this.term === term) {
      let waitMs = this.pollIntervalS * 1000
      try {
        const retryAfterS = await this.cycle(term)
        if (!this.connected) logger.info({ vtn: this.init.config.vtn_url }, 'VTN reached')
        this.connected = true
        this.failures = 0
        this.lastError = undefined
        if (retryAfterS !== undefined) waitMs = Math.max(waitMs, retryAfterS * 1000)
      } catch (error) {
        if (this.term !== term) return
        this.failures += 1
        this.metric.failures.inc()
        this.lastError = (error as Error).message.slice(0, 300)
        if (this.connected || this.failures === 1)
          logger.warn({ vtn: this.init.config.vtn_url, err: this.lastError }, 'VTN cycle failed: backing off')
        this.connected = false
        waitMs = Math.min(MAX_BACKOFF_MS, waitMs * 2 ** Math.min(this.failures - 1, 5))
        // A VTN that says how long to wait (429/503 Retry-After) is heard, within the same bound.
        if (error instanceof VtnRequestError && error.retryAfterS !== undefined)
          waitMs = Math.min(MAX_BACKOFF_MS, Math.max(waitMs, error.retryAfterS * 1000))
        if (error instanceof VtnRequestError && error.status === 404 && this.registration) {
          // Our ven object may be gone: register again next time.
          this.registration = undefined
        }
      }
      if (this.term !== term) return
      await this.evaluate()
      if (this.term !== term) return
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, waitMs)
        timer.unref?.()
        this.wake = () => {
          clearTimeout(timer)
          resolve()
        }
      })
      this.wake = undefined
    }
  }

  /** One poll; answers the Retry-After the VTN gave, if any. */
  private async cycle(term: Term): Promise<number | undefined> {
    const signal = term.abort.signal
    const registering = !this.registration || this.cycles % 10 === 0
    if (registering) await this.register(term)
    this.cycles += 1
    await this.maintainNotifier(term, registering)
    const events: Body[] = []
    const pollStarted = Date.now()
    let retryAfterS: number | undefined
    for (let skip = 0; skip < 10_000; skip += 50) {
      const answer = await this.client.call<Body[]>(
        'searchAllEvents',
        { query: { skip, limit: 50 } },
        { signal },
      )
      if (answer.retryAfterS !== undefined) retryAfterS = answer.retryAfterS
      const page = Array.isArray(answer.body) ? answer.body : []
      events.push(...page)
      if (page.length < 50) break
    }
    this.metric.polls.inc()
    this.lastPoll = Date.now()
    // The VTN shows a VEN only what it may see: a targeted event none of whose targets this VEN
    // knows means the VTN granted a target since it last registered (as it does with the
    // target of a control event on a resource). Read the grants again now rather than at the
    // next periodic registration, once per version of such an event.
    const unexplained = events.filter(
      (event) =>
        !this.refreshedFor.has(`${String(event.id)}|${String(event.modificationDateTime)}`) &&
        this.targetsOf(event).length > 0 &&
        !this.resources.some((resource) => this.applies(event, resource.name)),
    )
    if (unexplained.length > 0) {
      for (const event of unexplained)
        this.refreshedFor.add(`${String(event.id)}|${String(event.modificationDateTime)}`)
      if (this.refreshedFor.size > 10_000) this.refreshedFor.clear()
      await this.register(term)
    }
    this.absorb(events, pollStarted)
    return retryAfterS
  }

  /** A notifier that fails does not stop polling: it is retried next cycle and shown in status. */
  private async maintainNotifier(term: Term, recheck: boolean): Promise<void> {
    if (!term.notifier || !this.registration || !term.lease.valid()) return
    try {
      await term.notifier.maintain(this.registration.venID, recheck || this.notifierError !== undefined, {
        signal: term.abort.signal,
      })
      if (this.notifierError)
        this.components.logger.info({ mode: this.init.config.notifications }, 'notifications set up')
      this.notifierError = undefined
    } catch (error) {
      if (this.term !== term) return
      const message = (error as Error).message.slice(0, 300)
      if (this.notifierError === undefined)
        this.components.logger.warn(
          { mode: this.init.config.notifications, err: message },
          'notifications not set up: polling only, trying again next cycle',
        )
      this.notifierError = message
    }
  }

  private targetsOf(event: Body): string[] {
    return (
      (this.init.config.version === '3.1.0'
        ? (event.targets as string[] | undefined)
        : targetsFromValuesMaps(event.targets)) ?? []
    )
  }

  private async register(term: Term): Promise<void> {
    const signal = term.abort.signal
    /** Before each write to the VTN: a replica that lost the lease creates nothing. */
    const owning = () => {
      if (!term.lease.valid()) throw new VenStandbyError()
    }
    const { config } = this.init
    const v310 = config.version === '3.1.0'
    const targetsOf = (value: unknown): string[] =>
      (v310
        ? Array.isArray(value)
          ? value.filter((t): t is string => typeof t === 'string')
          : []
        : targetsFromValuesMaps(value)) ?? []
    // A VEN sees only its own ven objects: ours by name, or the one BL made for this client.
    const found = await this.client.call<Body[]>('searchVens', { query: { limit: 50 } }, { signal })
    const own = found.body ?? []
    let ven =
      own.find((candidate) => candidate.venName === config.ven_name) ??
      (own.length === 1 ? own[0] : undefined)
    if (!ven) {
      owning()
      const created = await this.client.call<Body>(
        'createVen',
        {
          body: v310
            ? { objectType: 'VEN_VEN_REQUEST', venName: config.ven_name }
            : { venName: config.ven_name },
        },
        { signal },
      )
      ven = created.body
      this.components.logger.info({ venID: ven.id, venName: config.ven_name }, 'registered with the VTN')
    }
    const venID = String(ven.id)
    const listed = await this.client.call<Body[]>(
      'searchVenResources',
      v310 ? { query: { venID, limit: 50 } } : { params: { venID }, query: { limit: 50 } },
      { signal },
    )
    const resources: Registration['resources'] = {}
    for (const resource of listed.body ?? [])
      resources[String(resource.resourceName)] = {
        id: String(resource.id),
        targets: targetsOf(resource.targets),
      }
    for (const { name } of this.resources) {
      if (resources[name]) continue
      owning()
      const created = await this.client.call<Body>(
        'createResource',
        v310
          ? { body: { objectType: 'VEN_RESOURCE_REQUEST', resourceName: name, venID } }
          : { params: { venID }, body: { resourceName: name } },
        { signal },
      )
      resources[name] = { id: String(created.body.id), targets: targetsOf(created.body.targets) }
    }
    owning()
    this.registration = { venID, venTargets: targetsOf(ven.targets), resources }
    await this.saveRegistration()
  }

  /** Take a fresh list of events: keep timing of known ones, forget deleted ones. */
  private absorb(events: Body[], pollStarted: number): void {
    const now = Date.now()
    const seen = new Set<string>()
    const newer = (id: string) => (this.notifiedAt.get(id) ?? 0) >= pollStarted
    for (const event of events) {
      const id = String(event.id)
      seen.add(id)
      if (!newer(id)) this.upsert(event, now)
    }
    for (const id of this.events.keys()) if (!seen.has(id) && !newer(id)) this.events.delete(id)
    for (const [id, at] of this.notifiedAt) if (at < pollStarted) this.notifiedAt.delete(id)
  }

  /** Take one event in (a new version of a known one keeps its first reading time and offset). */
  private upsert(event: Body, now: number): void {
    const id = String(event.id)
    const known = this.events.get(id)
    if (known && known.event.modificationDateTime === event.modificationDateTime) return
    const obtained = known?.obtained ?? now
    let offset = known?.offset
    const resolved = resolveEvent(event as never, obtained, (range) => {
      offset ??= uniformOffset(range)
      return offset
    })
    this.events.set(id, { event, obtained, offset, resolved })
  }

  // ---- acting on events ---------------------------------------------------------------------

  private applies(event: Body, resourceName: string): boolean {
    const v310 = this.init.config.version === '3.1.0'
    const targets =
      (v310 ? (event.targets as string[] | undefined) : targetsFromValuesMaps(event.targets)) ?? []
    if (targets.length === 0) return true
    const registration = this.registration
    if (!registration) return false
    const own = new Set([
      ...registration.venTargets,
      ...(registration.resources[resourceName]?.targets ?? []),
    ])
    return targets.some((target) => own.has(target))
  }

  private evaluate(): Promise<void> {
    const run = async () => {
      const term = this.term
      if (!term) return
      const now = Date.now()
      // Winner per resource and payload type: lowest priority number, then the latest event.
      const winners = new Map<string, { known: KnownEvent; value: ReturnType<typeof valuesAt>[number] }>()
      for (const known of this.events.values()) {
        for (const value of valuesAt(known.resolved, now)) {
          for (const resource of this.resources) {
            if (!this.applies(known.event, resource.name)) continue
            const key = `${resource.name}\u0000${value.type}`
            const current = winners.get(key)
            const priority = (known.event.priority as number | undefined) ?? Number.MAX_SAFE_INTEGER
            const currentPriority =
              (current?.known.event.priority as number | undefined) ?? Number.MAX_SAFE_INTEGER
            if (
              !current ||
              priority < currentPriority ||
              (priority === currentPriority && known.obtained > current.known.obtained)
            )
              winners.set(key, { known, value })
          }
        }
      }
      for (const [key, { known, value }] of winners) {
        const eventID = String(known.event.id)
        const previous = this.applied.get(key)
        if (
          previous &&
          previous.eventID === eventID &&
          sameValue(previous.value, value.value) &&
          previous.start === value.start &&
          previous.end === value.end
        )
          continue
        const resource = this.resources.find((candidate) => candidate.name === key.split('\u0000')[0])!
        // A replica that lost the lease publishes nothing more: the next owner acts instead.
        if (!term.lease.valid()) return
        try {
          await this.act(resource, known, value)
        } catch (error) {
          this.components.logger.warn(
            { resource: resource.name, type: value.type, err: (error as Error).message },
            'event value not acted on',
          )
          continue
        }
        this.applied.set(key, { eventID, value: value.value, start: value.start, end: value.end })
        // Kept at once (also should the lease just have gone: the next owner starts only after
        // the lease's guard time), so the next owner does not act on it again.
        await this.saveApplied().catch((error) =>
          this.components.logger.warn({ err: (error as Error).message }, 'acted-on values not saved'),
        )
      }
      if (!term.lease.valid()) return
      for (const key of this.applied.keys()) if (!winners.has(key)) this.applied.delete(key)
      await this.sendDueReports(term, now)
      if (!term.lease.valid()) return
      await Promise.all([this.saveApplied(), this.saveEvents(now)]).catch((error) =>
        this.components.logger.warn({ err: (error as Error).message }, 'state not saved'),
      )
      this.schedule(now)
    }
    this.evaluating = this.evaluating.then(run, run)
    return this.evaluating
  }

  private units(event: Body, type: string): { units?: string; currency?: string } {
    const descriptor = ((event.payloadDescriptors as Body[] | undefined) ?? []).find(
      (item) => item.payloadType === type,
    )
    return {
      ...(typeof descriptor?.units === 'string' ? { units: descriptor.units } : {}),
      ...(typeof descriptor?.currency === 'string' ? { currency: descriptor.currency } : {}),
    }
  }

  private async act(
    resource: { name: string; kind: ResourceKind; rid: string },
    known: KnownEvent,
    value: ReturnType<typeof valuesAt>[number],
  ): Promise<void> {
    const { dataPlane } = this.components
    const eventID = String(known.event.id)
    const timing = { start: value.start, ...(Number.isFinite(value.end) ? { end: value.end } : {}) }
    const { units, currency } = this.units(known.event, value.type)
    if (LIMIT_TYPES.has(value.type)) {
      const watts = limitWatts(value.value, units)
      if (watts === undefined)
        throw new OpenAdrError(
          'openadr-ven',
          `${value.type} value ${String(value.value)} ${units ?? 'KW'} is not a power`,
        )
      if (!dataPlane.publishControl) throw new OpenAdrError('openadr-ven', 'the data plane takes no controls')
      await dataPlane.publishControl(resource.kind, resource.rid, 'limit_power', {
        v: watts,
        u: 'W',
        ...(Number.isFinite(value.end) ? { until: value.end } : {}),
        source: `openadr:${eventID}`,
        direction: value.type === 'IMPORT_CAPACITY_LIMIT' ? 'import' : 'export',
      })
      this.metric.controls.inc()
      return
    }
    const base = {
      type: value.type,
      v: value.value as never,
      eventID,
      intervalId: value.intervalId,
      ...timing,
    }
    if (PRICE_TYPES.has(value.type)) {
      await dataPlane.publishEvent(resource.kind, resource.rid, 'price', {
        ...base,
        ...(units ? { units } : {}),
        ...(currency ? { currency } : {}),
      })
    } else if (value.type === 'SIMPLE') {
      await dataPlane.publishEvent(resource.kind, resource.rid, 'demand_level', base)
    } else {
      await dataPlane.publishEvent(resource.kind, resource.rid, 'openadr_signal', {
        ...base,
        ...(units ? { units } : {}),
      })
    }
  }

  /** Wake at the next moment something starts or ends (or a report is due). */
  private schedule(now: number): void {
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
    if (!this.term) return
    let next = Number.POSITIVE_INFINITY
    for (const known of this.events.values()) {
      const points = changePoints(known.resolved, now)
      if (points[0] !== undefined) next = Math.min(next, points[0])
      for (const descriptor of (known.event.reportDescriptors as Body[] | undefined) ?? []) {
        for (const item of reportSchedule(descriptor, known.resolved.intervals, now))
          if (item.at > now) next = Math.min(next, item.at)
      }
    }
    if (!Number.isFinite(next)) return
    const delay = Math.min(Math.max(10, next - now + 5), 86_400_000)
    this.timer = setTimeout(() => void this.evaluate(), delay)
    this.timer.unref?.()
  }

  // ---- reports ------------------------------------------------------------------------------

  private async sendDueReports(term: Term, now: number): Promise<void> {
    if (!this.registration || !this.connected) return
    for (const known of this.events.values()) {
      const descriptors = (known.event.reportDescriptors as Body[] | undefined) ?? []
      for (const [index, descriptor] of descriptors.entries()) {
        if (!REPORT_TYPES.has(descriptor.payloadType as string)) continue
        const due = reportSchedule(descriptor, known.resolved.intervals, now).filter((item) => item.at <= now)
        const keyOf = (item: { index: number }) =>
          `${String(known.event.id)}|${String(known.event.modificationDateTime)}|${index}|${item.index}`
        const unsent = due.filter((item) => !this.sentReports.has(keyOf(item)))
        if (unsent.length === 0) continue
        // 'Do it now': of reports already overdue, only the latest is sent.
        for (const item of unsent.slice(0, -1)) this.sentReports.add(keyOf(item))
        const item = unsent.at(-1)!
        // A replica that lost the lease reports nothing more: the next owner does.
        if (!term.lease.valid()) return
        try {
          if (!(await this.sendReport(term, known, descriptor, item.covers, now))) continue
          this.metric.reports.inc()
        } catch (error) {
          this.components.logger.warn(
            { eventID: known.event.id, err: (error as Error).message },
            'report not sent',
          )
          continue
        }
        this.sentReports.add(keyOf(item))
        // Kept at once, so the next owner does not send it again.
        await this.saveReports().catch((error) =>
          this.components.logger.warn({ err: (error as Error).message }, 'sent reports not saved'),
        )
      }
    }
  }

  /** Send one report; false when there was nothing to report (it is tried again later). */
  private async sendReport(
    term: Term,
    known: KnownEvent,
    descriptor: Body,
    covers: number[],
    now: number,
  ): Promise<boolean> {
    const { config } = this.init
    const type = descriptor.payloadType as string
    const descriptorTargets = Array.isArray(descriptor.targets) ? descriptor.targets : undefined
    const resources = this.resources.filter((resource) => {
      if (!this.applies(known.event, resource.name)) return false
      if (!descriptorTargets || descriptorTargets.length === 0) return true
      return this.applies({ targets: descriptorTargets }, resource.name)
    })
    // Without intervals to cover (ad hoc), the report covers the last AD_HOC_WINDOW_MS, under the
    // id of the event interval in force (0 before the first).
    const current = known.resolved.intervals.find((interval) => interval.start <= now && now < interval.end)
    const intervals =
      covers.length > 0
        ? covers.map((i) => known.resolved.intervals[i]!)
        : [{ id: current?.id ?? 0, start: now - AD_HOC_WINDOW_MS, end: now, payloads: [] }]
    const units = type === 'USAGE' ? 'KWH' : type === 'STORAGE_CHARGE_LEVEL' ? 'PERCENT' : 'KW'
    const entries: Body[] = []
    for (const resource of resources) {
      const values = await this.measure(resource, known, type, intervals, now, term.abort.signal)
      const reportIntervals = values
        .map((value, i) => {
          const interval = intervals[i]!
          const end = Number.isFinite(interval.end) ? Math.min(interval.end, now) : now
          return value === undefined
            ? undefined
            : {
                id: interval.id,
                intervalPeriod: {
                  start: isoString(interval.start),
                  duration: formatDuration(Math.max(0, end - interval.start)),
                },
                payloads: [{ type, values: [value] }],
              }
        })
        .filter((item) => item !== undefined)
      if (reportIntervals.length > 0)
        entries.push({ resourceName: resource.name, intervals: reportIntervals })
    }
    if (entries.length === 0) {
      this.components.logger.info(
        { eventID: known.event.id, type },
        'report not sent yet: no telemetry to report',
      )
      return false
    }
    const body: Body = {
      eventID: String(known.event.id),
      clientName: config.ven_name,
      reportName: `${type} ${String(known.event.eventName ?? known.event.id)}`.slice(0, 128),
      payloadDescriptors: [
        {
          ...(config.version === '3.1.0' ? { objectType: 'REPORT_PAYLOAD_DESCRIPTOR' } : {}),
          payloadType: type,
          readingType: type === 'DEMAND' ? 'MEAN' : 'DIRECT_READ',
          units,
        },
      ],
      resources: entries,
      ...(config.version === '3.0.1' ? { programID: String(known.event.programID) } : {}),
    }
    if (!term.lease.valid()) throw new VenStandbyError()
    await this.client.call('createReport', { body }, { signal: term.abort.signal })
    return true
  }

  /** One value per interval for a resource, from the node's telemetry (undefined: nothing to say). */
  private async measure(
    resource: { name: string; kind: ResourceKind; rid: string },
    known: KnownEvent,
    type: string,
    intervals: readonly { start: number; end: number }[],
    now: number,
    signal: AbortSignal,
  ): Promise<(number | undefined)[]> {
    if (type === 'SETPOINT') {
      const key = `${resource.name}\u0000IMPORT_CAPACITY_LIMIT`
      const applied = this.applied.get(key) ?? this.applied.get(`${resource.name}\u0000EXPORT_CAPACITY_LIMIT`)
      const fromEvent = applied?.eventID === String(known.event.id) ? applied.value : undefined
      const kw = typeof fromEvent === 'number' ? fromEvent : undefined
      return intervals.map(() => kw)
    }
    const quantities =
      type === 'STORAGE_CHARGE_LEVEL' ? ['soc'] : type === 'USAGE' ? ['energy_import', 'power'] : ['power']
    const since = Math.min(...intervals.map((interval) => interval.start))
    const read = this.components.dataPlane.readTelemetry
    if (!read) return intervals.map(() => undefined)
    const records = await read(resource.kind, resource.rid, quantities, {
      since: Number.isFinite(since) ? since : now - 3_600_000,
      signal,
    })
    return intervals.map((interval) => {
      const end = Number.isFinite(interval.end) ? Math.min(interval.end, now) : now
      const inside = (q: string) =>
        records.filter((record) => record.q === q && record.t >= interval.start && record.t < end)
      switch (type) {
        case 'DEMAND': {
          const power = inside('power')
          return power.length === 0
            ? undefined
            : round(power.reduce((sum, record) => sum + record.v, 0) / power.length / 1000)
        }
        case 'STORAGE_CHARGE_LEVEL': {
          const soc = inside('soc').at(-1)
          return soc === undefined ? undefined : round(soc.v / 100)
        }
        case 'USAGE': {
          const energy = inside('energy_import')
          if (energy.length >= 2) return round((energy.at(-1)!.v - energy[0]!.v) / 1000)
          const power = inside('power')
          return power.length === 0 ? undefined : round(integrateWh(power, end) / 1000)
        }
        default:
          return undefined
      }
    })
  }
}

/** Values compare equal also after a trip through the store (JSON). */
const sameValue = (a: unknown, b: unknown) => a === b || JSON.stringify(a) === JSON.stringify(b)

const round = (value: number) => Number.parseFloat(value.toPrecision(10))

/** Energy (Wh) of power readings held until the next one (the last until `end`). */
function integrateWh(power: readonly TelemetryRecord[], end: number): number {
  let wh = 0
  for (let i = 0; i < power.length; i++) {
    const next = power[i + 1]?.t ?? end
    wh += (power[i]!.v * Math.max(0, next - power[i]!.t)) / 3_600_000
  }
  return wh
}

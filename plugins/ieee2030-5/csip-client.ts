/**
 * The glue: one CSIP-AUS client session for all configured sites. Discovery (DeviceCapability →
 * Time → EndDeviceList), registration of each site's EndDevice (in-band when the server does not
 * know it yet) with its ConnectionPoint, DERCapability / DERSettings / DERStatus /
 * DERAvailability, then polling FunctionSetAssignments → DERPrograms → DefaultDERControl and
 * DERControlList at the rates the server asks for; the schedule turns what is in force into site
 * control commands and posts a response for every event; readings go to MirrorUsagePoints at the
 * server's post rate. Everything the client learnt is kept in KV, so a restart neither registers
 * again nor drops an envelope; when the server is unreachable, the cached schedule keeps running
 * (the envelope in force stays until it ends, then the default applies).
 *
 * Replicas: all of that is single-owner work, run under the plugin lease `client` (the host's
 * `ctx.lease`). The replica holding it is `active`; the others are `standby`, ready, and show the
 * shared state. A replica taking over starts from KV: what is registered is found again, responses
 * already posted are not posted twice, and the commands in force are not published again. When the
 * lease goes, timers stop and every step still under way checks the lease before it acts.
 */
import { hostname } from 'node:os'
import type { Logger, TelemetryRecord } from '../../data-plane/index.ts'
import type {
  PluginDataPlane,
  PluginInstance,
  PluginLease,
  PluginLeaseHandle,
  PluginMetrics,
} from '../api.ts'
import { CsipTransport } from './client.ts'
import type { CsipVersion, ParsedXml, XmlNode } from './codec.ts'
import type { CsipConfig, CsipSiteConfig, ResourceRef } from './config.ts'
import { CsipRegistrationError, CsipXmlError } from './errors.ts'
import { pinWithCheckDigit, sfdiFromLfdi } from './identity.ts'
import {
  average,
  controlsFor,
  isPostedQuantity,
  POSTED_QUANTITIES,
  readingType,
  SITE_COMMANDS,
  type SiteCommand,
  type SiteControl,
} from './normalise.ts'
import { NOTIFY_PATH, NotificationListener } from './notifications.ts'
import { ControlSchedule, type ProgramSnapshot, type ResponseDue } from './scheduler.ts'
import {
  type DerControl,
  type DeviceCapability,
  decodeDefaultDerControl,
  decodeDer,
  decodeDerControl,
  decodeDerProgram,
  decodeDeviceCapability,
  decodeEndDevice,
  decodeFunctionSetAssignments,
  decodeList,
  decodeMirrorUsagePoint,
  decodeRegistration,
  decodeTime,
  type EndDevice,
  encodeConnectionPoint,
  encodeDerAvailability,
  encodeDerCapability,
  encodeDerControlResponse,
  encodeDerSettings,
  encodeDerStatus,
  encodeEndDevice,
  encodeMirrorMeterReadingList,
  encodeMirrorUsagePoint,
  encodeSubscription,
  type ListPage,
  type MirrorReadingType,
  RESPONSE_STATUS,
} from './sep.ts'
import { CsipState, emptySiteState, type KeyValueStore, type OwnerRecord, type SiteState } from './state.ts'

/**
 * What the client needs from the data plane beyond today's plugin API: publishing control
 * commands on `oe.ctl.…` and reading the node's telemetry. The host's facade provides them once
 * it has them; until then envelopes are published as events and no readings are posted.
 */
export interface CsipDataPlaneExtras {
  publishControl?(kind: 'site', rid: string, command: string, payload: Record<string, unknown>): Promise<void>
  onTelemetry?(
    selector: { kinds: string[]; rids: string[] },
    handler: (record: TelemetryRecord) => void,
  ): void
}

export interface CsipClientComponents {
  dataPlane: PluginDataPlane & CsipDataPlaneExtras
  logger: Logger
  metrics: PluginMetrics
  signal: AbortSignal
  store: KeyValueStore
  /** Runs work on one replica of the node at a time (the host's `ctx.lease`); without it, here. */
  lease?: (name: string, work: (lease: PluginLease) => Promise<void>) => PluginLeaseHandle
}

/** Poll rate 2030.5 assumes when a resource gives none (seconds). */
const DEFAULT_POLL_S = 900
/** Retry after a failed exchange, doubling up to the poll rate. */
const RETRY_MIN_S = 1
/** A server clock further off than this from the host's is logged (the schedule follows the server). */
const CLOCK_WARN_MS = 60_000
/**
 * How old a read of the EndDeviceList or MirrorUsagePointList may be for a site registering to
 * look for its own entry in it (sites registering one after another share one read).
 */
const REGISTRATION_LIST_MAX_AGE_MS = 15_000
/** Sites whose commands a tick publishes at once. */
const TICK_CONCURRENCY = 64
/** How often a standby replica reads the shared state it shows in its status. */
const STANDBY_REFRESH_MS = 5_000

/** A read of a list several sites look into, and what this client added to the list since (key → href). */
interface SharedList {
  startedAt: number
  read: Promise<ListPage<unknown>>
  added: Map<string, string>
}

/** This replica's turn at the client's work: while its lease holds. */
interface Session {
  lease: PluginLease
  /** Aborts on lease loss or plugin stop: requests under way end at once. */
  signal: AbortSignal
}

interface Site {
  rid: string
  config: CsipSiteConfig
  lfdi: string
  sfdi: number
  state: SiteState
  schedule: ControlSchedule
  device?: EndDevice
  /** Registration refused (PIN mismatch): no more traffic for this site. */
  halted?: string
  registered: boolean
  pollRate?: number
  postRate?: number
  nextPoll: number
  nextPost: number
  failures: number
  /** When an exchange for this site last failed (epoch ms): lists read before it are not reused. */
  failedAt?: number
  readingTypes: { site: Map<string, MirrorReadingType>; der: Map<string, MirrorReadingType> }
  /** Telemetry since the last post: `<kind>.<rid>` → q → records. */
  buffer: Map<string, Map<string, TelemetryRecord[]>>
  pendingResponses: ResponseDue[]
  lastPostAt: number
  /** Readings that arrived (stored in OE_TEL) from this time on are not yet posted. */
  pulledSince?: number
  /** When readings were last posted to the site's MirrorUsagePoints (epoch ms), and how many. */
  lastPost?: { at: number; readings: number }
  /** Connected (opModConnect) and operating (opModEnergize) as last scheduled, for DERStatus. */
  connected: boolean
  energized: boolean
  statusHref?: string
  settingsHref?: string
  ratedW?: number
  /** The default ramp rate (DefaultDERControl setGradW) the DER was last set to. */
  gradW?: number
  /**
   * Server time (s) from which the schedule's output may differ from what the last tick made of
   * it: the next event edge, 0 after anything that changes it (a poll, a new clock offset, a
   * command not published). Until then a tick has nothing to do for the site.
   */
  tickDue: number
  /** Counts what made the schedule due (see `markDue`), so a tick under way does not clear a newer cause. */
  dueCount: number
}

export class CsipClient {
  private readonly transport: CsipTransport
  private readonly state: CsipState
  /** The configured sites' identities (known once the transport has its certificate). */
  private identities: { rid: string; config: CsipSiteConfig; lfdi: string }[] = []
  /** The sites this replica works on: loaded from KV when it becomes the owner, empty on standby. */
  private sites: Site[] = []
  private phase: 'created' | 'running' | 'stopped' = 'created'
  private session: Session | undefined
  /** One session at a time: a new one starts once the last has wound down. */
  private sessions: Promise<void> = Promise.resolve()
  private leaseHandle: PluginLeaseHandle | undefined
  /** On standby: the owner as it recorded itself, and the shared site state, read every few seconds. */
  private owner: OwnerRecord | undefined
  private shared = new Map<string, SiteState>()
  private standbyTimer: ReturnType<typeof setInterval> | undefined
  private version: CsipVersion
  private dcap: DeviceCapability | undefined
  private dcapPollRate: number | undefined
  private nextDiscovery = 0
  private discoveryFailures = 0
  private offsetMs = 0
  private connected = false
  private lastContact: number | undefined
  private lastError: string | undefined
  private wake: (() => void) | undefined
  private loop: Promise<void> | undefined
  private tickTimer: ReturnType<typeof setInterval> | undefined
  private edgeTimer: ReturnType<typeof setTimeout> | undefined
  private tickQueued = false
  private ticking: Promise<void> = Promise.resolve()
  /** Aborted when the client stops (every session's signal follows it). */
  private readonly abort = new AbortController()
  private warnedNoControl = false
  /** The last read of each list several sites look into (see `sharedList`), by href. */
  private sharedLists = new Map<string, SharedList>()
  private listener: NotificationListener | undefined
  /** Where this client posts Subscriptions in aggregator mode: the aggregator's own EndDevice. */
  private aggregatorSubscriptions: string | undefined
  private readonly counters: Record<
    'requests' | 'failures' | 'responses' | 'controls' | 'readings',
    { inc(value?: number): void }
  >

  constructor(
    private readonly config: CsipConfig,
    private readonly components: CsipClientComponents,
  ) {
    this.transport = new CsipTransport({
      server: config.server,
      cert: config.cert,
      key: config.key,
      ca: config.ca,
      timeoutSeconds: config.timeout,
      maxBodyBytes: config.max_body_bytes,
    })
    this.state = new CsipState(components.store)
    this.version = config.version === 'auto' ? 'v1.2' : config.version
    const { metrics } = components
    this.counters = {
      requests: metrics.counter('requests_total', 'Requests sent to the utility server'),
      failures: metrics.counter('request_failures_total', 'Requests to the utility server that failed'),
      responses: metrics.counter('responses_posted_total', 'DERControl responses posted'),
      controls: metrics.counter('controls_published_total', 'Site control commands published'),
      readings: metrics.counter('readings_posted_total', 'Readings posted to MirrorUsagePoints'),
    }
    this.transport.onRequest(({ method, href, status, ms, error }) => {
      this.counters.requests.inc()
      if (error || (status ?? 0) >= 400) this.counters.failures.inc()
      this.components.logger.debug({ method, href, status, ms: Math.round(ms), err: error }, 'request')
    })
    components.signal.addEventListener('abort', () => this.halt(), { once: true })
  }

  async start(_options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.phase !== 'created' || this.components.signal.aborted) return
    this.phase = 'running'
    await this.transport.start()
    const { mode } = this.config
    // Aggregator: each site's own EndDevice, never the aggregator certificate's LFDI.
    this.identities = Object.entries(this.config.sites).map(([rid, config]) => ({
      rid,
      config,
      lfdi: mode === 'device' ? this.transport.lfdi : config.lfdi!,
    }))
    this.subscribeTelemetry()
    if (this.config.notify_listen) await this.listen(this.config.notify_listen)
    if (this.phase !== 'running') return
    this.components.logger.info(
      { server: this.config.server, mode, sites: this.identities.length, lfdi: this.transport.lfdi },
      'csip-aus client starting',
    )
    const work = (lease: PluginLease): Promise<void> => {
      this.sessions = this.sessions.then(() => this.own(lease))
      return this.sessions
    }
    if (this.components.lease) {
      this.startStandby()
      this.leaseHandle = this.components.lease('client', work)
      return
    }
    // No replicas (a harness without the host): this client is the owner until it stops.
    const local: PluginLease = { signal: this.abort.signal, fence: 0, valid: () => this.phase === 'running' }
    await this.activate(local)
    if (this.session) this.sessions = this.serve(this.session)
  }

  async stop(): Promise<void> {
    this.halt()
    await this.sessions
    await this.leaseHandle?.release()
    await this.state.flush()
    await this.listener?.stop()
    this.transport.stop()
  }

  ready(): boolean {
    // A standby replica is ready: it takes over when the owner goes.
    return this.phase === 'running'
  }

  status(): Record<string, unknown> {
    // A stopped client that ran last shows what it did (a site halted, say), not 'standby'.
    const stoppedOwner = this.phase !== 'running' && this.sites.length > 0
    if (!this.session && !stoppedOwner) return this.standbyStatus()
    return {
      role: this.session ? 'active' : 'stopped',
      ...(this.components.lease && this.session ? { fence: this.session.lease.fence } : {}),
      server: this.config.server,
      mode: this.config.mode,
      version: this.version,
      connected: this.connected,
      ...(this.lastContact ? { lastContact: new Date(this.lastContact).toISOString() } : {}),
      ...(this.lastError ? { lastError: this.lastError } : {}),
      clockOffsetMs: Math.round(this.offsetMs),
      sites: Object.fromEntries(
        this.sites.map((site) => [
          site.rid,
          {
            lfdi: site.lfdi,
            sfdi: site.sfdi,
            registered: site.registered,
            ...(site.state.endDevice ? { endDevice: site.state.endDevice } : {}),
            ...(site.halted ? { halted: site.halted } : {}),
            controls: site.state.published,
            ...(site.lastPost ? { lastPost: site.lastPost } : {}),
          },
        ]),
      ),
    }
  }

  /** Operator actions: `poll` polls the server now (on the replica that runs the client). */
  operatorActions(): NonNullable<PluginInstance['actions']> {
    return {
      poll: async () => {
        if (!this.session)
          return { polling: false, role: 'standby', ...(this.owner ? { owner: this.owner } : {}) }
        this.nextDiscovery = 0
        for (const site of this.sites) site.nextPoll = 0
        this.wake?.()
        return { polling: true }
      },
    }
  }

  private halt(): void {
    if (this.phase === 'stopped') return
    this.phase = 'stopped'
    this.abort.abort()
    clearInterval(this.tickTimer)
    clearTimeout(this.edgeTimer)
    clearInterval(this.standbyTimer)
    this.wake?.()
  }

  /** True while this replica may act: the client runs and its lease holds. */
  private get running(): boolean {
    const session = this.session
    return (
      this.phase === 'running' && session !== undefined && !session.signal.aborted && session.lease.valid()
    )
  }

  /** The signal requests of the current session carry. */
  private get signal(): AbortSignal {
    return this.session?.signal ?? this.abort.signal
  }

  // ── replicas ─────────────────────────────────────────────────────────────────────────────────

  /** Run the client while `lease` holds: from the shared state, until the lease goes. */
  private async own(lease: PluginLease): Promise<void> {
    await this.activate(lease)
    if (this.session?.lease === lease) await this.serve(this.session)
  }

  /** Become the owner: sites from KV, the restored schedule in force, the loop running. */
  private async activate(lease: PluginLease): Promise<void> {
    if (this.phase !== 'running' || lease.signal.aborted || !lease.valid()) return
    const session: Session = { lease, signal: AbortSignal.any([this.abort.signal, lease.signal]) }
    this.session = session
    this.dcap = undefined
    this.sharedLists.clear()
    this.nextDiscovery = 0
    this.discoveryFailures = 0
    this.connected = false
    this.lastError = undefined
    this.sites = []
    const sites: Site[] = []
    for (const { rid, config, lfdi } of this.identities) {
      const stored = await this.state.load(rid).catch(() => undefined)
      const state = stored && stored.lfdi === lfdi ? stored : emptySiteState(lfdi)
      const schedule = new ControlSchedule(hashSeed(lfdi))
      schedule.restore(state.events, state.programs)
      if (state.offsetMs !== undefined) this.offsetMs = state.offsetMs
      sites.push({
        rid,
        config,
        lfdi,
        sfdi: sfdiFromLfdi(lfdi),
        state,
        schedule,
        registered: false,
        nextPoll: 0,
        nextPost: Date.now() + 5_000,
        failures: 0,
        readingTypes: { site: new Map(), der: new Map() },
        buffer: new Map(),
        pendingResponses: [...(state.pending ?? [])],
        lastPostAt: Date.now(),
        connected: true,
        energized: true,
        tickDue: 0,
        dueCount: 0,
      })
    }
    if (!this.running) {
      this.session = undefined
      return
    }
    this.sites = sites
    if (this.components.lease) {
      this.components.logger.info({ fence: lease.fence }, 'this replica runs the csip-aus client')
      const owner: OwnerRecord = {
        fence: lease.fence,
        host: hostname(),
        pid: process.pid,
        since: new Date().toISOString(),
      }
      this.owner = owner
      await this.state.saveOwner(owner).catch(() => {})
    }
    // The restored schedule is in force at once, before the server is reached.
    this.tickTimer = setInterval(() => this.scheduleTick(), 1_000)
    this.scheduleTick()
    this.loop = this.run()
  }

  /** Wait for the session to end (lease lost, or the client stopping), then wind it down. */
  private async serve(session: Session): Promise<void> {
    if (!session.signal.aborted) {
      await new Promise<void>((resolve) =>
        session.signal.addEventListener('abort', () => resolve(), { once: true }),
      )
    }
    clearInterval(this.tickTimer)
    clearTimeout(this.edgeTimer)
    this.wake?.()
    await this.loop
    await this.ticking
    // Each step saved what it did; those writes land before the next owner (a lease term later) reads.
    await this.state.flush()
    if (this.session === session) this.session = undefined
    // Stopping keeps the sites for a last status; a replica going on standby drops them.
    if (this.phase === 'running') this.sites = []
    this.connected = false
    // No longer the owner: the record it wrote says so until the next owner's is read.
    if (this.owner?.fence === session.lease.fence) this.owner = undefined
    if (this.phase === 'running') {
      this.components.logger.warn(
        { fence: session.lease.fence },
        'csip-aus client on standby: another replica runs it now',
      )
      void this.refreshStandby()
    }
  }

  private startStandby(): void {
    void this.refreshStandby()
    this.standbyTimer = setInterval(() => {
      if (!this.session) void this.refreshStandby()
    }, STANDBY_REFRESH_MS)
  }

  /** What a standby replica shows: the owner it recorded and the shared site state. */
  private async refreshStandby(): Promise<void> {
    try {
      this.owner = await this.state.loadOwner()
      for (const { rid } of this.identities) {
        const state = await this.state.load(rid)
        if (state) this.shared.set(rid, state)
      }
    } catch {
      // The data plane is unreachable: show what was read last.
    }
  }

  private standbyStatus(): Record<string, unknown> {
    return {
      role: 'standby',
      ...(this.owner ? { owner: this.owner } : {}),
      server: this.config.server,
      mode: this.config.mode,
      version: this.version,
      sites: Object.fromEntries(
        this.identities.map(({ rid, lfdi }) => {
          const state = this.shared.get(rid)
          return [
            rid,
            {
              lfdi,
              sfdi: sfdiFromLfdi(lfdi),
              registered: state?.endDevice !== undefined,
              ...(state?.endDevice ? { endDevice: state.endDevice } : {}),
              controls: state?.published ?? {},
            },
          ]
        }),
      ),
    }
  }

  /** Server time now, epoch seconds (the schedule's clock). */
  private serverNow(): number {
    return (Date.now() + this.offsetMs) / 1000
  }

  // ── the loop ─────────────────────────────────────────────────────────────────────────────────

  private async run(): Promise<void> {
    while (this.running) {
      const now = Date.now()
      if (now >= this.nextDiscovery) await this.guard('discovery', () => this.discover())
      for (const site of this.sites) {
        if (!this.running) return
        if (site.halted || !this.dcap) continue
        if (!site.registered && now >= site.nextPoll) {
          await this.siteGuard(site, 'registration', () => this.register(site))
        }
        if (site.registered && Date.now() >= site.nextPoll) {
          await this.siteGuard(site, 'poll', () => this.pollSite(site))
        }
        if (site.registered && Date.now() >= site.nextPost)
          await this.siteGuard(site, 'readings', () => this.postReadings(site))
        if (site.pendingResponses.length > 0) await this.flushResponses(site)
      }
      const next = Math.min(
        this.nextDiscovery,
        ...this.sites.filter((site) => !site.halted).flatMap((site) => [site.nextPoll, site.nextPost]),
      )
      await this.sleep(Math.max(50, Math.min(next - Date.now(), 60_000)))
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms)
      function done() {
        clearTimeout(timer)
        resolve()
      }
      this.wake = done
    })
  }

  private pollSeconds(serverRate: number | undefined): number {
    return this.config.poll ?? serverRate ?? DEFAULT_POLL_S
  }

  private async guard(what: string, work: () => Promise<void>): Promise<void> {
    try {
      await work()
      this.discoveryFailures = 0
    } catch (error) {
      if (!this.running) return
      this.discoveryFailures += 1
      const retry = Math.min(
        this.pollSeconds(this.dcapPollRate),
        RETRY_MIN_S * 2 ** Math.min(this.discoveryFailures, 10),
      )
      this.nextDiscovery = Date.now() + retry * 1000
      this.failed(what, error, { retryS: retry })
    }
  }

  private async siteGuard(site: Site, what: string, work: () => Promise<void>): Promise<void> {
    try {
      await work()
      site.failures = 0
    } catch (error) {
      if (!this.running) return
      if (error instanceof CsipRegistrationError) {
        site.halted = error.message
        this.components.logger.error({ site: site.rid, err: error.message, name: error.name }, 'site halted')
        return
      }
      site.failures += 1
      site.failedAt = Date.now()
      const retry = Math.min(this.pollSeconds(site.pollRate), RETRY_MIN_S * 2 ** Math.min(site.failures, 10))
      if (what === 'readings') site.nextPost = Date.now() + retry * 1000
      else site.nextPoll = Date.now() + retry * 1000
      this.failed(what, error, { site: site.rid, retryS: retry })
    }
  }

  private failed(what: string, error: unknown, fields: Record<string, unknown>): void {
    const err = error as Error
    const wasConnected = this.connected
    this.connected = false
    this.lastError = `${err.name}: ${err.message}`
    // An outage is expected in the field: a warning, named, with what the client does about it.
    this.components.logger.warn(
      { ...fields, what, name: err.name, err: err.message, wasConnected },
      err instanceof CsipXmlError ? 'utility server sent unusable XML' : 'utility server exchange failed',
    )
  }

  private async get(href: string): Promise<ParsedXml> {
    const parsed = await this.transport.get(href, { signal: this.signal })
    this.contact()
    if (this.config.version === 'auto' && parsed.version && parsed.version !== this.version) {
      this.version = parsed.version
      this.components.logger.info({ version: parsed.version }, 'CSIP-AUS version from server namespace')
    }
    return parsed
  }

  private contact(): void {
    if (!this.connected) this.components.logger.info({ server: this.config.server }, 'utility server reached')
    this.connected = true
    this.lastContact = Date.now()
    this.lastError = undefined
  }

  /** Read a whole list, page by page (`s`, `l`), up to max_list_items. */
  private async readList<T>(href: string, item: string, decode: (node: XmlNode) => T): Promise<ListPage<T>> {
    const items: T[] = []
    let start = 0
    let first: ListPage<T> | undefined
    for (;;) {
      const url = this.transport.resolve(href)
      url.searchParams.set('s', String(start))
      url.searchParams.set('l', String(this.config.page_size))
      const parsed = await this.get(`${url.pathname}${url.search}`)
      const page = decodeList(parsed.node, item, decode)
      first ??= page
      items.push(...page.items)
      start += page.items.length
      if (page.items.length === 0 || start >= page.all) break
      if (items.length >= this.config.max_list_items) {
        this.components.logger.warn(
          { href, all: page.all, read: items.length, limit: this.config.max_list_items },
          'list longer than max_list_items: the rest is ignored',
        )
        break
      }
    }
    return { ...first!, items: items.slice(0, this.config.max_list_items) }
  }

  /**
   * A whole list that several sites look into (the EndDeviceList and MirrorUsagePointList, where
   * each site finds its own entry): one read serves every site that asks for a read started after
   * `since` (and at most `maxAgeMs` old), rather than each site reading all of it — with 1,000
   * sites that is one read of the list instead of 1,000.
   */
  private async sharedList<T>(
    href: string,
    item: string,
    decode: (node: XmlNode) => T,
    options: { since: number; maxAgeMs?: number },
  ): Promise<{ list: ListPage<T>; added: Map<string, string> }> {
    const now = Date.now()
    let entry = this.sharedLists.get(href)
    if (
      !entry ||
      entry.startedAt <= options.since ||
      (options.maxAgeMs !== undefined && now - entry.startedAt > options.maxAgeMs)
    ) {
      const fresh: SharedList = { startedAt: now, read: this.readList(href, item, decode), added: new Map() }
      this.sharedLists.set(href, fresh)
      // A failed read is not reused: the next site reads again.
      fresh.read.catch(() => {
        if (this.sharedLists.get(href) === fresh) this.sharedLists.delete(href)
      })
      entry = fresh
    }
    return { list: (await entry.read) as ListPage<T>, added: entry.added }
  }

  /**
   * What this client just created in a list (an EndDevice by LFDI, a MirrorUsagePoint by mRID):
   * later sites looking into the same read see it.
   */
  private noteAdded(listHref: string, key: string, href: string): void {
    this.sharedLists.get(listHref)?.added.set(key, href)
  }

  // ── discovery and registration ───────────────────────────────────────────────────────────────

  private async discover(): Promise<void> {
    const parsed = await this.get(this.config.server)
    if (parsed.root !== 'DeviceCapability')
      throw new CsipXmlError(`expected DeviceCapability at the server URL, got ${parsed.root}`)
    this.dcap = decodeDeviceCapability(parsed.node)
    this.dcapPollRate = this.dcap.pollRate
    if (this.dcap.timeLink) await this.syncTime(this.dcap.timeLink)
    if (this.dcap.endDeviceListLink && this.sites.some((site) => site.registered)) {
      // The EndDeviceList is polled at its own rate as a liveness check; registrations are per site.
      const list = await this.readList(this.dcap.endDeviceListLink, 'EndDevice', decodeEndDevice)
      this.noteAggregator(list.items)
    }
    this.nextDiscovery = Date.now() + this.pollSeconds(this.dcapPollRate) * 1000
  }

  private async syncTime(href: string): Promise<void> {
    const sent = Date.now()
    const parsed = await this.get(href)
    const time = decodeTime(parsed.node)
    if (!time) throw new CsipXmlError('Time without currentTime')
    const received = Date.now()
    // Whole seconds on the wire: the host's midpoint stands for the server's second.
    const offset = time.currentTime * 1000 - (sent + received) / 2
    // Keep sub-second noise out: only a change over a second moves the clock.
    if (Math.abs(offset - this.offsetMs) > 1_000) {
      this.offsetMs = offset
      // Commands carry `until` in host time: every site's are due again.
      for (const site of this.sites) markDue(site)
      const level = Math.abs(offset) > CLOCK_WARN_MS ? 'warn' : 'info'
      this.components.logger[level](
        { offsetMs: Math.round(offset), quality: time.quality },
        'server clock differs from host clock: controls follow server time',
      )
    }
  }

  private async register(site: Site): Promise<void> {
    const dcap = this.dcap!
    let device: EndDevice | undefined
    if (site.state.endDevice) {
      device = await this.get(site.state.endDevice)
        .then((parsed) => ({ ...decodeEndDevice(parsed.node), href: site.state.endDevice! }))
        .catch((error) => {
          if ((error as { status?: number }).status === 404) return undefined
          throw error
        })
    }
    if (!device && dcap.endDeviceListLink) {
      const { list, added } = await this.sharedList(dcap.endDeviceListLink, 'EndDevice', decodeEndDevice, {
        since: site.failedAt ?? 0,
        maxAgeMs: REGISTRATION_LIST_MAX_AGE_MS,
      })
      this.noteAggregator(list.items)
      device = list.items.find((candidate) => candidate.lfdi === site.lfdi && candidate.href)
      const addedHref = added.get(site.lfdi)
      if (!device && addedHref) device = { href: addedHref }
      if (!device) {
        // In-band registration.
        const answer = await this.transport.post(
          dcap.endDeviceListLink,
          encodeEndDevice(
            { lfdi: site.lfdi, sfdi: site.sfdi, changedTime: Math.floor(this.serverNow()) },
            this.version,
          ),
          { signal: this.signal },
        )
        this.contact()
        const href =
          answer.location ??
          (await this.readList(dcap.endDeviceListLink, 'EndDevice', decodeEndDevice)).items.find(
            (candidate) => candidate.lfdi === site.lfdi,
          )?.href
        if (!href) throw new CsipXmlError('the server registered the EndDevice but says not where')
        this.components.logger.info(
          { site: site.rid, lfdi: site.lfdi, sfdi: site.sfdi, href },
          'EndDevice registered',
        )
        device = { href: this.transport.resolve(href).pathname }
        this.noteAdded(dcap.endDeviceListLink, site.lfdi, device.href!)
      }
      // The full resource (its links) from its own href.
      const parsed = await this.get(device.href!)
      device = { ...decodeEndDevice(parsed.node), href: device.href! }
    }
    if (!device?.href)
      throw new CsipXmlError('no EndDeviceListLink in DeviceCapability and no EndDevice known')
    site.device = device
    site.state.endDevice = device.href

    if (device.registrationLink) {
      const registration = decodeRegistration((await this.get(device.registrationLink)).node)
      if (site.config.pin !== undefined && registration.pin !== undefined) {
        const expected = pinWithCheckDigit(site.config.pin)
        if (registration.pin !== expected && registration.pin !== site.config.pin) {
          throw new CsipRegistrationError(
            `site ${site.rid}: the server's registration PIN does not match the configured one`,
          )
        }
      }
    }
    if (site.config.nmi && device.connectionPointLink) {
      await this.transport.put(
        device.connectionPointLink,
        encodeConnectionPoint(site.config.nmi, this.version),
        {
          signal: this.signal,
        },
      )
    }
    await this.reportDer(site)
    await this.ensureMirrors(site)
    site.registered = true
    site.nextPoll = 0
    await this.state.save(site.rid, site.state)
  }

  /** DERCapability, DERSettings, DERStatus and DERAvailability of the site's DER (ratings summed). */
  private async reportDer(site: Site): Promise<void> {
    const device = site.device
    if (!device?.derListLink) return
    const ders = await this.readList(device.derListLink, 'DER', decodeDer)
    const der = ders.items[0]
    if (!der) return
    if (der.href) site.state.der = der.href
    if (der.statusLink) site.statusHref = der.statusLink
    const ratings = await this.ratings(site)
    const now = Math.floor(this.serverNow())
    const connected = site.connected
    const put = (href: string | undefined, xml: string) =>
      href ? this.transport.put(href, xml, { signal: this.signal }) : Promise.resolve()
    await put(
      der.capabilityLink,
      encodeDerCapability(
        {
          ratedW: ratings.ratedW,
          type: ratings.storage ? (ratings.pv ? 83 : 80) : ratings.pv ? 4 : 0,
          ...(ratings.storage ? { maxChargeW: ratings.storageW, maxDischargeW: ratings.storageW } : {}),
          ...(ratings.capacityWh ? { maxWh: ratings.capacityWh } : {}),
        },
        this.version,
      ),
    )
    if (der.settingsLink) site.settingsHref = der.settingsLink
    site.ratedW = ratings.ratedW
    await put(
      der.settingsLink,
      encodeDerSettings(
        {
          maxW: ratings.ratedW,
          updatedTime: now,
          ...(site.gradW !== undefined ? { gradW: site.gradW } : {}),
        },
        this.version,
      ),
    )
    await put(
      der.statusLink,
      encodeDerStatus({ readingTime: now, connected, operating: connected && site.energized }, this.version),
    )
    await put(
      der.availabilityLink,
      encodeDerAvailability(
        { readingTime: now, availableW: connected && site.energized ? ratings.ratedW : 0 },
        this.version,
      ),
    )
  }

  private async ratings(
    site: Site,
  ): Promise<{ ratedW: number; pv: boolean; storage: boolean; storageW: number; capacityWh: number }> {
    let ratedW = 0
    let storageW = 0
    let capacityWh = 0
    let pv = false
    let storage = false
    for (const ref of site.config.ders) {
      const resource = await this.components.dataPlane.getResource(ref.kind, ref.rid).catch(() => undefined)
      const attrs = (resource?.attrs ?? {}) as Record<string, unknown>
      const rated = Number(attrs.ratedPowerW ?? attrs.maxPowerW ?? 0)
      if (Number.isFinite(rated) && rated > 0) ratedW += rated
      if (ref.kind === 'pv' || ref.kind === 'inverter') pv = true
      if (ref.kind === 'battery') {
        storage = true
        storageW += Number.isFinite(rated) ? rated : 0
        const capacity = Number(attrs.capacityWh ?? 0)
        if (Number.isFinite(capacity)) capacityWh += capacity
      }
    }
    return { ratedW: site.config.rated_w ?? (ratedW || 1), pv, storage, storageW, capacityWh }
  }

  /** The site's and its DER's MirrorUsagePoints: found by mRID or created. */
  private async ensureMirrors(site: Site): Promise<void> {
    const listHref = this.dcap?.mirrorUsagePointListLink
    if (!listHref) return
    if (site.state.mirrors.site && (site.config.ders.length === 0 || site.state.mirrors.der)) return
    const { list: existing, added } = await this.sharedList(
      listHref,
      'MirrorUsagePoint',
      decodeMirrorUsagePoint,
      { since: site.failedAt ?? 0, maxAgeMs: REGISTRATION_LIST_MAX_AGE_MS },
    )
    if (existing.pollRate !== undefined) site.postRate = existing.pollRate
    for (const role of ['site', 'der'] as const) {
      if (role === 'der' && site.config.ders.length === 0) continue
      if (site.state.mirrors[role]) continue
      const mrid = mirrorMrid(site.lfdi, role)
      const found = existing.items.find((point) => point.mrid === mrid && point.href)
      if (found?.href) {
        site.state.mirrors[role] = found.href
        if (found.postRate) site.postRate = found.postRate
        continue
      }
      const addedHref = added.get(mrid)
      if (addedHref) {
        site.state.mirrors[role] = addedHref
        continue
      }
      const types = this.readingTypesFor(site, role)
      const answer = await this.transport.post(
        listHref,
        encodeMirrorUsagePoint(
          {
            mrid,
            description: `${site.rid} ${role === 'site' ? 'site' : 'DER'}`,
            lfdi: site.lfdi,
            // Site: isMirror | isPremisesAggregationPoint; DER: isMirror | isDER | isSubmeter.
            roleFlags: role === 'site' ? 0x03 : 0x49,
            readings: types,
          },
          this.version,
        ),
        { signal: this.signal },
      )
      const href =
        answer.location ??
        (await this.readList(listHref, 'MirrorUsagePoint', decodeMirrorUsagePoint)).items.find(
          (point) => point.mrid === mrid,
        )?.href
      if (href) {
        site.state.mirrors[role] = this.transport.resolve(href).pathname
        this.noteAdded(listHref, mrid, site.state.mirrors[role]!)
      }
    }
  }

  private readingTypesFor(site: Site, role: 'site' | 'der'): MirrorReadingType[] {
    const quantities =
      role === 'site'
        ? [
            'power',
            'reactive_power',
            'voltage',
            'frequency',
            'power_l1',
            'power_l2',
            'power_l3',
            'voltage_l1',
            'voltage_l2',
            'voltage_l3',
          ]
        : ['power', 'reactive_power']
    const map = site.readingTypes[role]
    for (const q of quantities) if (!map.has(q)) map.set(q, readingType(site.lfdi, role, q))
    return [...map.values()]
  }

  // ── controls ─────────────────────────────────────────────────────────────────────────────────

  private async pollSite(site: Site): Promise<void> {
    const device = site.device!
    let rate: number | undefined
    const programs: ProgramSnapshot[] = []
    const subscribable: string[] = []
    if (device.fsaListLink) {
      const fsas = await this.readList(
        device.fsaListLink,
        'FunctionSetAssignments',
        decodeFunctionSetAssignments,
      )
      rate = minRate(rate, fsas.pollRate)
      for (const fsa of fsas.items) {
        if (!fsa.derProgramListLink) continue
        const list = await this.readList(fsa.derProgramListLink, 'DERProgram', decodeDerProgram)
        rate = minRate(rate, list.pollRate)
        subscribable.push(fsa.derProgramListLink)
        for (const program of list.items) {
          if (!program.href || programs.some((known) => known.href === program.href)) continue
          if (program.controlListLink) subscribable.push(program.controlListLink)
          if (program.defaultControlLink) subscribable.push(program.defaultControlLink)
          // A link to nothing (404) means the program has none; any other failure aborts the poll,
          // so the schedule keeps what it last had rather than dropping it.
          const defaultControl = program.defaultControlLink
            ? await this.get(program.defaultControlLink)
                .then((parsed) => decodeDefaultDerControl(parsed.node))
                .catch(absentOn404)
            : undefined
          let controls: DerControl[] = []
          if (program.controlListLink) {
            const page = await this.readList(program.controlListLink, 'DERControl', (node) =>
              decodeDerControl(node),
            ).catch(absentOn404)
            controls = (page?.items ?? []).filter((control): control is DerControl => control !== undefined)
            if (page && controls.length < page.items.length)
              this.components.logger.warn(
                {
                  site: site.rid,
                  href: program.controlListLink,
                  dropped: page.items.length - controls.length,
                },
                'DERControls without mRID or interval ignored',
              )
          }
          programs.push({
            href: program.href,
            primacy: program.primacy,
            ...(defaultControl ? { defaultControl } : {}),
            controls,
          })
        }
      }
    }
    if (device.derListLink) {
      const ders = await this.readList(device.derListLink, 'DER', decodeDer)
      rate = minRate(rate, ders.pollRate)
      if (ders.items[0]?.statusLink) site.statusHref = ders.items[0].statusLink
      await this.putStatus(site)
    }
    site.pollRate = rate
    site.nextPoll = Date.now() + this.pollSeconds(rate) * 1000
    // The default ramp rate of the best program: applied to the DER and reported in DERSettings.
    const gradW = [...programs]
      .sort((a, b) => a.primacy - b.primacy)
      .find((program) => program.defaultControl?.setGradW !== undefined)?.defaultControl?.setGradW
    if (gradW !== undefined && gradW !== site.gradW && site.settingsHref && site.ratedW !== undefined) {
      site.gradW = gradW
      await this.transport.put(
        site.settingsHref,
        encodeDerSettings(
          { maxW: site.ratedW, gradW, updatedTime: Math.floor(this.serverNow()) },
          this.version,
        ),
        { signal: this.signal },
      )
    }
    const due = site.schedule.update(programs, this.serverNow())
    markDue(site)
    site.pendingResponses.push(...due)
    site.schedule.prune(this.serverNow() - 86_400)
    this.persist(site)
    await this.flushResponses(site)
    this.scheduleTick()
    if (this.listener) {
      const hrefs = [
        ...(site === this.sites[0] && this.dcap?.endDeviceListLink ? [this.dcap.endDeviceListLink] : []),
        ...(device.fsaListLink ? [device.fsaListLink] : []),
        ...subscribable,
      ]
      await this.subscribe(site, hrefs)
    }
  }

  // ── subscriptions ────────────────────────────────────────────────────────────────────────────

  private async listen(listen: string): Promise<void> {
    const colon = listen.lastIndexOf(':')
    const host = listen.slice(0, colon).replace(/^\[|\]$/g, '')
    const port = Number(listen.slice(colon + 1))
    const pems = this.transport.pems!
    this.listener = new NotificationListener(
      { host, port, ...pems, maxBodyBytes: this.config.max_body_bytes },
      {
        logger: this.components.logger,
        onNotification: (rid, notification) => {
          const site = this.sites.find((candidate) => candidate.rid === rid)
          if (!site) return
          this.components.logger.debug({ site: rid, ...notification, resource: undefined }, 'notification')
          // Status other than 0 (default): the subscription ended; subscribe again on the next poll.
          if (
            notification.status !== undefined &&
            notification.status !== 0 &&
            notification.subscribedResource
          )
            delete site.state.subscriptions?.[notification.subscribedResource]
          site.nextPoll = 0
          this.wake?.()
        },
      },
    )
    await this.listener.start()
  }

  private noteAggregator(devices: readonly EndDevice[]): void {
    if (this.config.mode !== 'aggregator') return
    const own = devices.find((device) => device.lfdi === this.transport.lfdi)
    if (own?.subscriptionListLink) this.aggregatorSubscriptions = own.subscriptionListLink
  }

  /** POST a Subscription for each href not yet subscribed (refusals are remembered too). */
  private async subscribe(site: Site, hrefs: readonly string[]): Promise<void> {
    const target =
      this.config.mode === 'aggregator'
        ? (this.aggregatorSubscriptions ?? site.device?.subscriptionListLink)
        : site.device?.subscriptionListLink
    if (!target || !this.listener) return
    const base =
      this.config.notify_url ??
      `https://${this.config.notify_listen!.replace(/:\d+$/, '')}:${this.listener.port}`
    const notificationUri = `${base.replace(/\/$/, '')}${NOTIFY_PATH}${encodeURIComponent(site.rid)}`
    site.state.subscriptions ??= {}
    const known = site.state.subscriptions
    let changed = false
    for (const href of new Set(hrefs)) {
      if (known[href]) continue
      try {
        const answer = await this.transport.post(
          target,
          encodeSubscription({ resource: href, notificationUri, limit: 1 }, this.version),
          { signal: this.signal },
        )
        known[href] = answer.location ?? 'subscribed'
        changed = true
      } catch (error) {
        const status = (error as { status?: number }).status
        if (status === undefined || status >= 500) throw error
        known[href] = 'refused'
        changed = true
        this.components.logger.info({ site: site.rid, href, status }, 'subscription refused: polling only')
      }
    }
    if (changed) this.persist(site)
  }

  private async putStatus(site: Site): Promise<void> {
    if (!site.statusHref) return
    await this.transport.put(
      site.statusHref,
      encodeDerStatus(
        {
          readingTime: Math.floor(this.serverNow()),
          connected: site.connected,
          operating: site.connected && site.energized,
        },
        this.version,
      ),
      { signal: this.signal },
    )
  }

  private persist(site: Site): void {
    const snapshot = site.schedule.snapshot()
    site.state.events = snapshot.events
    site.state.programs = snapshot.programs
    site.state.offsetMs = this.offsetMs
    site.state.pending = [...site.pendingResponses]
    void this.state.save(site.rid, site.state).catch((error: Error) => {
      this.components.logger.warn({ site: site.rid, err: error.message }, 'state not saved')
    })
  }

  /**
   * Every second, at each event edge, and after each poll: what is in force now, and the
   * responses due. A pass already waiting to start covers later calls.
   */
  private scheduleTick(): void {
    if (!this.running || this.tickQueued) return
    this.tickQueued = true
    this.ticking = this.ticking.then(() =>
      this.tickPass().catch((error: Error) => {
        this.components.logger.warn({ err: error.message }, 'schedule tick failed')
      }),
    )
  }

  /** One pass over the sites whose schedule may have changed since their last tick. */
  private async tickPass(): Promise<void> {
    this.tickQueued = false
    const now = this.serverNow()
    const due = this.sites.filter((site) => now >= site.tickDue)
    // Sites publish side by side (each its own commands in order): 1,000 sites' new envelope
    // is on the data plane in a fraction of a second rather than one confirmed publish after another.
    let next = 0
    const worker = async () => {
      while (next < due.length && this.running) await this.tickSite(due[next++]!, now)
    }
    await Promise.all(Array.from({ length: Math.min(TICK_CONCURRENCY, due.length) }, worker))
    if (!this.running) return
    if (this.sites.some((site) => site.pendingResponses.length > 0 && site.registered)) this.wake?.()
    this.armEdgeTick()
  }

  /** A tick at the next event edge within the second: a control starts on time, not up to a second late. */
  private armEdgeTick(): void {
    clearTimeout(this.edgeTimer)
    const now = this.serverNow()
    let edge = Number.POSITIVE_INFINITY
    for (const site of this.sites) if (site.tickDue > now && site.tickDue < edge) edge = site.tickDue
    const delayMs = edge * 1000 - this.offsetMs - Date.now()
    if (!(delayMs < 1_000)) return
    this.edgeTimer = setTimeout(() => this.scheduleTick(), Math.max(0, delayMs) + 2)
  }

  /** What is in force for one site now: commands published when they change, responses due. */
  private async tickSite(site: Site, now: number): Promise<void> {
    const dueCount = site.dueCount
    const { responses, modes } = site.schedule.tick(now)
    const connected = modes.get('opModConnect')?.value !== false
    const energized = modes.get('opModEnergize')?.value !== false
    const statusChanged = connected !== site.connected || energized !== site.energized
    site.connected = connected
    site.energized = energized
    // The utility sees the new connection state at once, not at the next poll.
    if (statusChanged && site.registered) void this.putStatus(site).catch(() => {})
    site.pendingResponses.push(...responses)
    const controls = controlsFor(modes, this.offsetMs)
    let changed = responses.length > 0
    let unpublished = false
    for (const control of controls) {
      if (sameControl(site.state.published[control.command], control.payload)) continue
      // The lease may have gone while the last command was published: the next owner publishes.
      if (!this.running) return
      const ok = await this.publishControl(site, control)
      if (ok) {
        site.state.published[control.command] = control.payload
        changed = true
      } else {
        unpublished = true
        if (control.payload.source.startsWith('csip-aus:event:')) {
          const mrid = control.payload.source.slice('csip-aus:event:'.length)
          const track = site.schedule.events.get(mrid)
          if (track?.replyTo && !track.sent.includes(RESPONSE_STATUS.cannotBeMet)) {
            track.sent.push(RESPONSE_STATUS.cannotBeMet)
            site.pendingResponses.push({
              mrid,
              replyTo: track.replyTo,
              status: RESPONSE_STATUS.cannotBeMet,
            })
          }
        }
      }
    }
    // A command not published is tried again at the next tick; otherwise nothing changes before
    // the next edge, unless a poll or a new clock offset came while this tick published.
    if (unpublished) site.tickDue = 0
    else if (site.dueCount === dueCount)
      site.tickDue = site.schedule.nextChange(now) ?? Number.POSITIVE_INFINITY
    if (changed) this.persist(site)
  }

  private async publishControl(site: Site, control: SiteControl): Promise<boolean> {
    const { dataPlane, logger } = this.components
    try {
      if (dataPlane.publishControl) {
        await dataPlane.publishControl('site', site.rid, control.command, control.payload)
      } else if (!this.warnedNoControl) {
        this.warnedNoControl = true
        logger.warn({}, 'the plugin API has no publishControl: envelopes are published as events only')
      }
      await dataPlane.publishEvent('site', site.rid, 'envelope', {
        command: control.command,
        ...control.payload,
      })
      this.counters.controls.inc()
      logger.info({ site: site.rid, command: control.command, ...control.payload }, 'control in force')
      return true
    } catch (error) {
      if (!this.running) return false
      logger.warn(
        { site: site.rid, command: control.command, err: (error as Error).message },
        'control not published',
      )
      return false
    }
  }

  private async flushResponses(site: Site): Promise<void> {
    while (site.pendingResponses.length > 0 && this.running) {
      const response = site.pendingResponses[0]!
      try {
        await this.transport.post(
          response.replyTo,
          encodeDerControlResponse(
            {
              lfdi: site.lfdi,
              subject: response.mrid,
              status: response.status,
              createdDateTime: Math.floor(this.serverNow()),
            },
            this.version,
          ),
          { signal: this.signal },
        )
        this.contact()
        this.counters.responses.inc()
        site.pendingResponses.shift()
        // Posted: a replica taking over must not post it again.
        this.persist(site)
      } catch (error) {
        const status = (error as { status?: number }).status
        if (status !== undefined && status >= 400 && status < 500) {
          // The server refuses it: sending again will not help.
          site.pendingResponses.shift()
          this.persist(site)
          this.components.logger.warn(
            { site: site.rid, ...response, status },
            'response refused by the server',
          )
          continue
        }
        this.failed('response', error, { site: site.rid, pending: site.pendingResponses.length })
        return
      }
    }
  }

  // ── readings ─────────────────────────────────────────────────────────────────────────────────

  private subscribeTelemetry(): void {
    const { dataPlane } = this.components
    if (!dataPlane.onTelemetry) {
      // The host's facade: readings are read from OE_TEL at each post (pullTelemetry).
      if (!dataPlane.readTelemetry) {
        this.components.logger.warn({}, 'the data plane cannot read telemetry: no readings will be posted')
      }
      return
    }
    const refs = this.identities.flatMap(({ config }) => [config.meter, ...config.ders])
    dataPlane.onTelemetry(
      { kinds: [...new Set(refs.map((ref) => ref.kind))], rids: [...new Set(refs.map((ref) => ref.rid))] },
      (record) => {
        if (!isPostedQuantity(record.q)) return
        for (const site of this.sites) {
          if (!refersTo([site.config.meter, ...site.config.ders], record)) continue
          const key = `${record.kind}.${record.rid}`
          const byQuantity = site.buffer.get(key) ?? new Map<string, TelemetryRecord[]>()
          site.buffer.set(key, byQuantity)
          const list = byQuantity.get(record.q) ?? []
          if (list.length < 10_000) list.push(record)
          byQuantity.set(record.q, list)
        }
      },
    )
  }

  /** The site's readings stamped since the last post, read from the node's telemetry (OE_TEL). */
  private async pullTelemetry(site: Site): Promise<void> {
    const { dataPlane } = this.components
    const signal = this.signal
    if (!dataPlane.readTelemetry) return
    const since = site.pulledSince ?? site.lastPostAt
    site.pulledSince = Date.now()
    for (const ref of [site.config.meter, ...site.config.ders]) {
      const records = await dataPlane.readTelemetry(ref.kind, ref.rid, POSTED_QUANTITIES, {
        since,
        by: 'arrival',
        max: 10_000,
        signal,
      })
      const key = `${ref.kind}.${ref.rid}`
      const byQuantity = site.buffer.get(key) ?? new Map<string, TelemetryRecord[]>()
      site.buffer.set(key, byQuantity)
      for (const record of records) {
        const list = byQuantity.get(record.q) ?? []
        list.push(record)
        byQuantity.set(record.q, list)
      }
    }
  }

  private async postReadings(site: Site): Promise<void> {
    // The list tells the post rate the server wants now (it may change it at any time).
    const listHref = this.dcap?.mirrorUsagePointListLink
    if (listHref) {
      // Read within the site's last post interval: the rate the server wants now.
      const { list } = await this.sharedList(listHref, 'MirrorUsagePoint', decodeMirrorUsagePoint, {
        since: site.lastPostAt,
      })
      const mine = list.items.find((point) => point.href && point.href === site.state.mirrors.site)
      const rate = mine?.postRate ?? list.pollRate
      if (rate !== undefined) site.postRate = rate
    }
    const postRate = this.config.poll ?? site.postRate ?? site.device?.postRate ?? this.config.post_rate
    site.nextPost = Date.now() + postRate * 1000
    if (!this.components.dataPlane.onTelemetry) await this.pullTelemetry(site)
    const buffer = site.buffer
    site.buffer = new Map()
    const start = Math.floor((site.lastPostAt + this.offsetMs) / 1000)
    const duration = Math.max(1, Math.round((Date.now() - site.lastPostAt) / 1000))
    site.lastPostAt = Date.now()
    const meterKey = `${site.config.meter.kind}.${site.config.meter.rid}`
    const rows: Record<
      'site' | 'der',
      { type: MirrorReadingType; value: number; start: number; duration: number }[]
    > = {
      site: [],
      der: [],
    }
    for (const [q, records] of buffer.get(meterKey) ?? []) {
      const value = average(records)
      if (value === undefined) continue
      rows.site.push({
        type:
          this.readingTypesFor(site, 'site').find((t) => t.mrid === readingType(site.lfdi, 'site', q).mrid) ??
          readingType(site.lfdi, 'site', q),
        value,
        start,
        duration,
      })
    }
    for (const q of ['power', 'reactive_power']) {
      let total: number | undefined
      for (const ref of site.config.ders) {
        const value = average(buffer.get(`${ref.kind}.${ref.rid}`)?.get(q) ?? [])
        if (value !== undefined) total = (total ?? 0) + value
      }
      if (total !== undefined)
        rows.der.push({ type: readingType(site.lfdi, 'der', q), value: total, start, duration })
    }
    for (const role of ['site', 'der'] as const) {
      const href = site.state.mirrors[role]
      if (!href || rows[role].length === 0) continue
      await this.transport.post(href, encodeMirrorMeterReadingList(rows[role], this.version), {
        signal: this.signal,
      })
      this.contact()
      this.counters.readings.inc(rows[role].length)
      site.lastPost = { at: Date.now(), readings: rows.site.length + rows.der.length }
    }
  }
}

/** The site's schedule may have changed: its next tick works it out again. */
function markDue(site: Site): void {
  site.tickDue = 0
  site.dueCount += 1
}

function absentOn404(error: unknown): undefined {
  if ((error as { status?: number }).status === 404) return undefined
  throw error
}

function minRate(current: number | undefined, next: number | undefined): number | undefined {
  if (next === undefined) return current
  return current === undefined ? next : Math.min(current, next)
}

function sameControl(previous: SiteControl['payload'] | undefined, next: SiteControl['payload']): boolean {
  return (
    previous !== undefined &&
    previous.v === next.v &&
    previous.source === next.source &&
    // A re-read Time may move `until` by rounding: a second either way is the same envelope.
    Math.abs((previous.until ?? 0) - (next.until ?? 0)) <= 1_000
  )
}

function refersTo(refs: readonly ResourceRef[], record: TelemetryRecord): boolean {
  return refs.some((ref) => ref.kind === record.kind && ref.rid === record.rid)
}

function mirrorMrid(lfdi: string, role: 'site' | 'der'): string {
  return `${role === 'site' ? '5173' : 'DE12'}${lfdi.slice(0, 28)}`
}

function hashSeed(text: string): number {
  let hash = 0x811c9dc5
  for (const char of text) hash = Math.imul(hash ^ char.charCodeAt(0), 0x01000193) >>> 0
  return hash
}

export { SITE_COMMANDS, type SiteCommand }

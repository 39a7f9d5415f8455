/**
 * The CPO role. Serves the node's own charging stations (standing data `station` and
 * `evse`, e.g. from the OCPP plugin; never those learnt from OCPI partners) as Locations, with
 * EVSE statuses from `status` events, pushing a changed location (PUT) and every status change
 * (PATCH) to the eMSPs; turns OCPP transactions (`session_started` / `session_stopped` events)
 * into Sessions for the eMSP whose token started them, and a CDR (POST) when one ends; serves
 * its tariffs from the config; stores the tokens eMSPs push and answers the node's token
 * authorisations with them (real-time authorisation at the eMSP for `NEVER`-whitelisted or
 * unknown tokens). Commands become control commands on the data plane
 * (`oe.ctl.evse.<rid>.start_session`, `stop_session`, `unlock_connector`, `reserve_now`,
 * `cancel_reservation`, each with a `request` id); the `control_result` event carrying that id
 * becomes the CommandResult, or TIMEOUT. Charging profiles become `limit_power` (`source`
 * `ocpi:<request>`); the station's `limit_result` / `control_result` becomes the
 * ChargingProfileResult.
 */
import { createHash } from 'node:crypto'
import { ZodError } from 'zod'
import type { Resource } from '../../data-plane/index.ts'
import type { EventMessage, ResourceChange, TokenAuthorization, TokenAuthorizationRequest } from '../api.ts'
import { joinUrl } from './emsp.ts'
import {
  costOf,
  type EvseState,
  type LocationContext,
  limitFromProfile,
  locationFromResources,
  ocpiIdFor,
  ocppStatusToOcpi,
  parseEvseRid,
  withoutUndefined,
} from './normalise.ts'
import type { OcpiRole, RoleContext } from './ocpi.ts'
import { fail, type OcpiReply, type OcpiRequest, ok, paginate, type Route } from './server.ts'
import { fromKeyToken, keyToken, type Partner, sha256 } from './state.ts'
import {
  type Cdr,
  type CdrToken,
  type ChargingProfile,
  COMMAND_TYPES,
  type CommandResultType,
  type CommandType,
  describeIssues,
  type Evse,
  type EvseStatus,
  formatDateTime,
  type InterfaceRole,
  type Location,
  type ModuleId,
  OCPI_VERSION,
  ocpi221,
  parseDateTime,
  type ReceivedToken,
  type Session,
  type Tariff,
} from './v221.ts'

const BASE = `/ocpi/cpo/${OCPI_VERSION}`
const lenient = ocpi221.lenient
const strict = ocpi221.strict
const upper = (value: string) => value.toUpperCase()
const ownerKey = (countryCode: string, partyId: string) =>
  `${keyToken(upper(countryCode))}.${keyToken(upper(partyId))}`
const stamp = (ms: number) => formatDateTime(ms - (ms % 1000))

interface CpoSession {
  session: Session
  rid: string
  transactionId: string
  /** The eMSP partner whose token started it (pushes go there). */
  partner?: string
  meterStartWh?: number
  /** The URL the eMSP answered our CDR POST with. */
  cdrLocation?: string
}

interface Pending {
  id: string
  type: CommandType | 'SET_PROFILE' | 'CLEAR_PROFILE'
  partner: string
  responseUrl: string
  rid: string
  deadline: number
  session?: string
  /** Set profile: the limit sent. */
  watts?: number
  profile?: ChargingProfile
  reservation?: string
}

interface StoredToken {
  token: ReceivedToken
  partner: string
}

const sessionIdFor = (rid: string, transactionId: string) =>
  createHash('sha256').update(`${rid}\u0000${transactionId}`).digest('hex').slice(0, 32)

/** An OCPP-side outcome (control_result / limit_result `status`) as an OCPI CommandResult. */
function commandResult(payload: Record<string, unknown>): CommandResultType {
  const status = typeof payload.status === 'string' ? payload.status.toLowerCase() : undefined
  switch (status) {
    case 'accepted':
      return 'ACCEPTED'
    case 'rejected':
      return 'REJECTED'
    case 'occupied':
      return 'EVSE_OCCUPIED'
    case 'faulted':
    case 'unavailable':
    case 'inoperative':
      return 'EVSE_INOPERATIVE'
    case 'notsupported':
    case 'not_supported':
      return 'NOT_SUPPORTED'
    case 'timeout':
      return 'TIMEOUT'
    case 'unknownreservation':
    case 'unknown_reservation':
      return 'UNKNOWN_RESERVATION'
    default:
      return payload.ok === true ? 'ACCEPTED' : 'FAILED'
  }
}

export class CpoRole implements OcpiRole {
  readonly name = 'CPO' as const
  private readonly stations = new Map<string, Resource>()
  private readonly evses = new Map<string, Map<number, Resource>>()
  /** EVSE rid → station and number. */
  private readonly evseIndex = new Map<string, { station: string; number: number }>()
  /** OCPI ids → rids. */
  private readonly locationIds = new Map<string, string>()
  private readonly evseUids = new Map<string, string>()
  private readonly statuses = new Map<string, EvseState>()
  private readonly sessions = new Map<string, CpoSession>()
  private readonly cdrs = new Map<string, Cdr>()
  private readonly tokens = new Map<string, StoredToken>()
  private readonly pending = new Map<string, Pending>()
  private readonly timers = new Map<string, ReturnType<typeof setTimeout>>()
  /** The last token authorised at a station or EVSE (attributes sessions whose event has none). */
  private readonly recentAuth = new Map<
    string,
    { token: ReceivedToken; reference?: string; at: number; method: Session['auth_method'] }
  >()
  private readonly profiles = new Map<string, { profile: ChargingProfile; start: number }>()
  private readonly pushChains = new Map<string, Promise<void>>()
  private readonly pushTimers = new Map<string, ReturnType<typeof setTimeout>>()
  private tariffs: Tariff[] = []
  private locationCache: Location[] | undefined
  private initialised = false
  private sessionTimer: ReturnType<typeof setInterval> | undefined
  private targetsCache: { at: number; partners: Partner[] } | undefined
  private readonly metric

  constructor(private readonly context: RoleContext) {
    this.metric = {
      pushes: context.metrics.counter('cpo_pushes_total', 'OCPI objects the CPO role pushed to eMSPs'),
      pushFailures: context.metrics.counter(
        'cpo_push_failures_total',
        'OCPI pushes of the CPO role that failed',
      ),
      commands: context.metrics.counter('cpo_commands_total', 'OCPI commands and charging profiles received'),
    }
  }

  endpoints(): { identifier: ModuleId; role: InterfaceRole; path: string }[] {
    return [
      { identifier: 'locations', role: 'SENDER', path: `${BASE}/locations` },
      { identifier: 'sessions', role: 'SENDER', path: `${BASE}/sessions` },
      { identifier: 'cdrs', role: 'SENDER', path: `${BASE}/cdrs` },
      { identifier: 'tariffs', role: 'SENDER', path: `${BASE}/tariffs` },
      { identifier: 'tokens', role: 'RECEIVER', path: `${BASE}/tokens` },
      { identifier: 'commands', role: 'RECEIVER', path: `${BASE}/commands` },
      { identifier: 'chargingprofiles', role: 'RECEIVER', path: `${BASE}/chargingprofiles` },
    ]
  }

  routes(): Route[] {
    const route = (module: string, handle: (request: OcpiRequest) => Promise<OcpiReply>): Route => ({
      base: `${BASE}/${module}`,
      access: 'partner',
      functional: true,
      handle,
    })
    return [
      route('locations', (request) => this.onLocations(request)),
      route('sessions', (request) => this.onSessions(request)),
      route('cdrs', (request) => this.onCdrs(request)),
      route('tariffs', (request) => this.onTariffs(request)),
      route('tokens', (request) => this.onTokens(request)),
      route('commands', (request) => this.onCommand(request)),
      route('chargingprofiles', (request) => this.onChargingProfile(request)),
    ]
  }

  async start(_options: { signal?: AbortSignal }): Promise<void> {
    const { objects, dataPlane, config } = this.context
    await this.loadTariffs()
    for (const { key, value } of await objects.values<EvseState>('status.*'))
      this.statuses.set(fromKeyToken(key.slice('status.'.length)), value)
    for (const { value } of await objects.values<CpoSession>('cses.*'))
      this.sessions.set(value.session.id, value)
    for (const { value } of await objects.values<Cdr>('ccdr.*')) this.cdrs.set(value.id, value)
    for (const { value } of await objects.values<StoredToken>('tok.>'))
      this.tokens.set(this.tokenKey(value.token), value)
    for (const { value } of await objects.values<Pending>('ccmd.*')) this.track(value)
    if (!dataPlane.watchResources || !dataPlane.onEvent) {
      // A harness without a data plane: nothing to publish as locations.
      this.context.logger.warn(
        {},
        'no standing-data watch or event subscription: the CPO role serves no locations',
      )
      return
    }
    await dataPlane.watchResources(['station', 'evse'], (change) => this.onResource(change), {
      signal: this.context.signal,
    })
    this.initialised = true
    dataPlane.onEvent(
      {
        kinds: ['evse', 'station'],
        types: ['status', 'session_started', 'session_stopped', 'control_result', 'limit_result', 'offline'],
      },
      (event) => this.onEvent(event),
    )
    dataPlane.answerTokenAuthorization?.((request) => this.authorize(request))
    this.sessionTimer = setInterval(() => void this.updateSessions(), config.session_update_interval * 1000)
    this.sessionTimer.unref?.()
  }

  async stop(): Promise<void> {
    if (this.sessionTimer) clearInterval(this.sessionTimer)
    for (const timer of this.timers.values()) clearTimeout(timer)
    for (const timer of this.pushTimers.values()) clearTimeout(timer)
    this.timers.clear()
    this.pushTimers.clear()
    await Promise.allSettled([...this.pushChains.values()])
  }

  status(): Record<string, unknown> {
    const locations = this.locations()
    return {
      locations: locations.length,
      evses: locations.reduce((sum, location) => sum + (location.evses?.length ?? 0), 0),
      unpublishable: this.unpublishable().length,
      sessions: {
        active: [...this.sessions.values()].filter((s) => s.session.status === 'ACTIVE').length,
        total: this.sessions.size,
      },
      cdrs: this.cdrs.size,
      tokens: this.tokens.size,
      commands_pending: this.pending.size,
    }
  }

  async onRegistered(partner: Partner): Promise<void> {
    if (!partner.roles.some((role) => role.role !== 'CPO')) return
    this.targetsCache = undefined
    const to = this.context.partyOf(partner, 'EMSP') ?? this.context.partyOf(partner, partner.roles[0]!.role)
    const tariffsUrl = this.context.endpoint(partner, 'tariffs', 'RECEIVER')
    for (const tariff of tariffsUrl ? this.tariffs : []) {
      await this.push(
        partner,
        'PUT',
        joinUrl(tariffsUrl!, tariff.country_code, tariff.party_id, tariff.id),
        tariff,
        to,
      )
    }
    const locationsUrl = this.context.endpoint(partner, 'locations', 'RECEIVER')
    for (const location of locationsUrl ? this.locations() : []) {
      await this.push(
        partner,
        'PUT',
        joinUrl(locationsUrl!, location.country_code, location.party_id, location.id),
        location,
        to,
      )
    }
  }

  actions(): Record<string, (input: Record<string, unknown>) => Promise<unknown>> {
    return {
      locations: async () => ({
        locations: this.locations().map((location) => ({
          id: location.id,
          evses: location.evses?.map((evse) => ({ uid: evse.uid, status: evse.status })) ?? [],
        })),
        unpublishable: this.unpublishable(),
      }),
      sessions: async () => ({
        sessions: [...this.sessions.values()].map((entry) => ({
          ...entry.session,
          partner: entry.partner ?? null,
        })),
      }),
    }
  }

  // ---- standing data → locations ------------------------------------------------------------

  private onResource(change: ResourceChange): void {
    const { kind, rid, resource } = change
    let station: string | undefined
    if (kind === 'station') {
      if (resource) this.stations.set(rid, resource)
      else this.stations.delete(rid)
      this.locationIds.set(ocpiIdFor(rid), rid)
      station = rid
    } else if (kind === 'evse') {
      const previous = this.evseIndex.get(rid)
      if (previous) this.evses.get(previous.station)?.delete(previous.number)
      if (resource) {
        const parsed = parseEvseRid(rid)
        const owner = typeof resource.attrs.station === 'string' ? resource.attrs.station : parsed?.station
        const number = typeof resource.attrs.evse === 'number' ? resource.attrs.evse : parsed?.evse
        if (owner && number) {
          const list = this.evses.get(owner) ?? new Map<number, Resource>()
          list.set(number, resource)
          this.evses.set(owner, list)
          this.evseIndex.set(rid, { station: owner, number })
          this.evseUids.set(ocpiIdFor(rid), rid)
          station = owner
        }
      } else {
        this.evseIndex.delete(rid)
        station = previous?.station
      }
    }
    this.locationCache = undefined
    if (this.initialised && station) this.schedulePush(station)
  }

  /** Only the node's own stations: those learnt from OCPI partners are not ours to publish. */
  private ownStation(rid: string): Resource | undefined {
    const station = this.stations.get(rid)
    return station && station.attrs.source !== 'ocpi' ? station : undefined
  }

  private locationContext(): LocationContext {
    const { config } = this.context
    return {
      countryCode: config.country_code,
      partyId: config.party_id,
      defaults: config.location,
      connector: config.connector,
      tariffIds: this.tariffs.length > 0 ? [config.tariff_id ?? this.tariffs[0]!.id] : [],
      operator: config.business_name,
    }
  }

  private location(stationRid: string): Location | { missing: string } | undefined {
    const station = this.ownStation(stationRid)
    if (!station) return undefined
    const evses = [...(this.evses.get(stationRid) ?? new Map()).entries()].map(([number, resource]) => ({
      resource,
      number,
      state: this.statuses.get(resource.rid),
    }))
    if (evses.length === 0) return { missing: 'evses' }
    return locationFromResources(station, evses, this.locationContext())
  }

  /** Every publishable location, oldest change first (pagination order). */
  private locations(): Location[] {
    if (this.locationCache) return this.locationCache
    const out: Location[] = []
    for (const rid of this.stations.keys()) {
      const location = this.location(rid)
      if (location && !('missing' in location)) out.push(location)
    }
    out.sort((a, b) =>
      a.last_updated < b.last_updated ? -1 : a.last_updated > b.last_updated ? 1 : a.id < b.id ? -1 : 1,
    )
    this.locationCache = out
    return out
  }

  private unpublishable(): { station: string; missing: string }[] {
    const out: { station: string; missing: string }[] = []
    for (const rid of this.stations.keys()) {
      const location = this.location(rid)
      if (location && 'missing' in location) out.push({ station: rid, missing: location.missing })
    }
    return out
  }

  private async onLocations(request: OcpiRequest): Promise<OcpiReply> {
    if (request.method !== 'GET') return fail(405, 2000, 'locations: GET only (Sender interface)')
    const [locationId, evseUid, connectorId, ...rest] = request.segments
    if (rest.length > 0) return fail(404, 2000, 'locations: /{location_id}[/{evse_uid}[/{connector_id}]]')
    if (locationId === undefined) {
      return paginate(this.locations(), request, {
        maxLimit: this.context.config.page_limit,
        updated: (location) => parseDateTime(location.last_updated) ?? 0,
        publicUrl: this.context.publicUrl(`${BASE}/locations`),
      })
    }
    const rid = this.locationIds.get(locationId)
    const location = rid ? this.location(rid) : undefined
    if (!location || 'missing' in location)
      return fail(404, 2003, `unknown location '${locationId.slice(0, 36)}'`)
    if (evseUid === undefined) return ok(location)
    const evse = location.evses?.find((candidate) => candidate.uid === evseUid)
    if (!evse) return fail(404, 2003, `unknown EVSE '${evseUid.slice(0, 36)}'`)
    if (connectorId === undefined) return ok(evse)
    const connector = evse.connectors.find((candidate) => candidate.id === connectorId)
    return connector ? ok(connector) : fail(404, 2003, `unknown connector '${connectorId.slice(0, 36)}'`)
  }

  /** The location, EVSE and its number for an EVSE rid (own stations only). */
  private evseOf(rid: string): { location: Location; evse: Evse; station: string } | undefined {
    const index = this.evseIndex.get(rid)
    if (!index) return undefined
    const location = this.location(index.station)
    if (!location || 'missing' in location) return undefined
    const evse = location.evses?.find((candidate) => candidate.uid === ocpiIdFor(rid))
    return evse ? { location, evse, station: index.station } : undefined
  }

  // ---- pushes -----------------------------------------------------------------------------------

  /** eMSP-side partners with a receiver endpoint for a module (cached a few seconds). */
  private async targets(module: ModuleId): Promise<Partner[]> {
    const now = Date.now()
    if (!this.targetsCache || now - this.targetsCache.at > 5_000) {
      const partners = (await this.context.registered()).filter((partner) =>
        partner.roles.some((role) => role.role !== 'CPO'),
      )
      this.targetsCache = { at: now, partners }
    }
    return this.targetsCache.partners.filter((partner) => this.context.endpoint(partner, module, 'RECEIVER'))
  }

  private schedulePush(station: string): void {
    // Coalesce a burst (a station and its EVSEs appear together) into one PUT.
    const existing = this.pushTimers.get(station)
    if (existing) clearTimeout(existing)
    const timer = setTimeout(() => {
      this.pushTimers.delete(station)
      const location = this.location(station)
      if (location && !('missing' in location)) void this.pushLocation(location)
    }, 200)
    timer.unref?.()
    this.pushTimers.set(station, timer)
  }

  private async pushLocation(location: Location): Promise<void> {
    for (const partner of await this.targets('locations')) {
      const url = this.context.endpoint(partner, 'locations', 'RECEIVER')!
      this.chain(`loc:${partner.id}:${location.id}`, () =>
        this.push(
          partner,
          'PUT',
          joinUrl(url, location.country_code, location.party_id, location.id),
          location,
        ),
      )
    }
  }

  private async pushStatus(rid: string): Promise<void> {
    const found = this.evseOf(rid)
    if (!found) return
    const { location, evse } = found
    const body = { status: evse.status, last_updated: evse.last_updated }
    for (const partner of await this.targets('locations')) {
      const url = this.context.endpoint(partner, 'locations', 'RECEIVER')!
      // In order per EVSE and partner: a later status never overtakes an earlier one.
      this.chain(`loc:${partner.id}:${location.id}`, () =>
        this.push(
          partner,
          'PATCH',
          joinUrl(url, location.country_code, location.party_id, location.id, evse.uid),
          body,
        ),
      )
    }
  }

  private chain(key: string, work: () => Promise<unknown>): void {
    const previous = this.pushChains.get(key) ?? Promise.resolve()
    const next = previous.then(work).then(
      () => undefined,
      () => undefined,
    )
    this.pushChains.set(key, next)
    void next.then(() => {
      if (this.pushChains.get(key) === next) this.pushChains.delete(key)
    })
  }

  /** Push one object; failures are logged and counted, not queued (OCPI: the receiver pulls). */
  private async push(
    partner: Partner,
    method: string,
    url: string,
    body: unknown,
    to = this.context.partyOf(partner, 'EMSP'),
  ) {
    try {
      const answer = await this.context.send(partner, method, url, { body, ...(to ? { to } : {}) })
      this.metric.pushes.inc()
      return answer
    } catch (error) {
      this.metric.pushFailures.inc()
      this.context.logger.warn(
        { partner: partner.id, method, url, err: (error as Error).message },
        'ocpi push failed',
      )
      return undefined
    }
  }

  // ---- events from the stations ------------------------------------------------------------------

  private async onEvent(event: EventMessage): Promise<void> {
    try {
      await this.handleEvent(event)
    } catch (error) {
      // An object that does not fit the schema will not fit on redelivery either.
      if (!(error instanceof ZodError)) throw error
      this.context.logger.error(
        { kind: event.kind, rid: event.rid, type: event.type, err: (error as Error).message.slice(0, 500) },
        'ocpi object from an event does not fit the schema: dropped',
      )
    }
  }

  private async handleEvent(event: EventMessage): Promise<void> {
    const { kind, rid, type, payload } = event
    switch (type) {
      case 'status': {
        if (kind !== 'evse' || payload.source === 'ocpi') return
        const t = typeof payload.t === 'number' ? payload.t : Date.now()
        await this.setStatus(rid, ocppStatusToOcpi(payload.status), t)
        return
      }
      case 'offline': {
        if (kind !== 'station') return
        const t = typeof payload.t === 'number' ? payload.t : Date.now()
        for (const resource of this.evses.get(rid)?.values() ?? [])
          await this.setStatus(resource.rid, 'UNKNOWN', t)
        return
      }
      case 'session_started':
        if (kind === 'evse' && payload.source !== 'ocpi') await this.sessionStarted(rid, payload)
        return
      case 'session_stopped':
        if (payload.source !== 'ocpi') await this.sessionStopped(kind === 'evse' ? rid : undefined, payload)
        return
      case 'control_result':
      case 'limit_result':
        await this.onResult(rid, type, payload)
        return
    }
  }

  private async setStatus(rid: string, status: EvseStatus, t: number): Promise<void> {
    const previous = this.statuses.get(rid)
    if (previous && previous.status === status && previous.t >= t) return
    const state = { status, t: Math.max(t, previous?.t ?? 0) }
    this.statuses.set(rid, state)
    await this.context.objects.put(`status.${keyToken(rid)}`, state)
    this.locationCache = undefined
    if (previous?.status !== status) await this.pushStatus(rid)
  }

  /** The token a session was started with, and who owns it. */
  private tokenOf(
    rid: string,
    payload: Record<string, unknown>,
  ): { cdrToken: CdrToken; method: Session['auth_method']; reference?: string } | undefined {
    const given =
      payload.idTag ?? payload.idToken ?? (payload.token as { idToken?: unknown } | undefined)?.idToken
    const uid =
      typeof given === 'string' ? given : typeof payload.token === 'string' ? payload.token : undefined
    const now = Date.now()
    const index = this.evseIndex.get(rid)
    const recent = [this.recentAuth.get(rid), index ? this.recentAuth.get(index.station) : undefined].find(
      (entry) => entry && now - entry.at < 15 * 60_000 && (uid === undefined || entry.token.uid === uid),
    )
    const token = recent?.token ?? (uid === undefined ? undefined : this.findToken(uid))
    if (!token) {
      if (uid === undefined) return undefined
      const { config } = this.context
      return {
        cdrToken: {
          country_code: config.country_code,
          party_id: config.party_id,
          uid: uid.slice(0, 36),
          type: 'OTHER',
          contract_id: uid.slice(0, 36),
        },
        method: 'WHITELIST',
      }
    }
    if (recent) this.recentAuth.delete(recent === this.recentAuth.get(rid) ? rid : index!.station)
    return {
      cdrToken: {
        country_code: token.country_code,
        party_id: token.party_id,
        uid: token.uid,
        type: token.type,
        contract_id: token.contract_id,
      },
      method: recent?.method ?? 'WHITELIST',
      ...(recent?.reference ? { reference: recent.reference } : {}),
    }
  }

  private async sessionStarted(rid: string, payload: Record<string, unknown>): Promise<void> {
    const transactionId = payload.transactionId
    if (typeof transactionId !== 'string' && typeof transactionId !== 'number') return
    const id = sessionIdFor(rid, String(transactionId))
    if (this.sessions.has(id)) return
    const found = this.evseOf(rid)
    if (!found) {
      this.context.logger.debug(
        { rid },
        'session on an EVSE that is not a published location: not an OCPI session',
      )
      return
    }
    const { config } = this.context
    const t = typeof payload.t === 'number' ? payload.t : Date.now()
    const token = this.tokenOf(rid, payload)
    const cdrToken: CdrToken = token?.cdrToken ?? {
      country_code: config.country_code,
      party_id: config.party_id,
      uid: 'UNKNOWN',
      type: 'OTHER',
      contract_id: 'UNKNOWN',
    }
    const partner = await this.context.partnerOfParty(cdrToken.country_code, cdrToken.party_id)
    const session = strict.session.parse(
      withoutUndefined({
        country_code: config.country_code,
        party_id: config.party_id,
        id,
        start_date_time: stamp(t),
        kwh: 0,
        cdr_token: cdrToken,
        auth_method: token?.method ?? 'WHITELIST',
        authorization_reference: token?.reference,
        location_id: found.location.id,
        evse_uid: found.evse.uid,
        connector_id: found.evse.connectors[0]!.id,
        currency: config.currency,
        status: 'ACTIVE',
        last_updated: stamp(Date.now()),
      }),
    )
    const entry: CpoSession = withoutUndefined({
      session,
      rid,
      transactionId: String(transactionId),
      partner: partner?.id,
      meterStartWh: typeof payload.meterStartWh === 'number' ? payload.meterStartWh : undefined,
    })
    // Pushed before it is stored: a crash in between has the event redelivered and the session
    // pushed again (the same PUT), never stored but not pushed.
    if (partner) await this.pushSession(partner, session)
    await this.saveSession(entry)
  }

  private async saveSession(entry: CpoSession): Promise<void> {
    this.sessions.set(entry.session.id, entry)
    await this.context.objects.put(`cses.${entry.session.id}`, entry)
  }

  private async pushSession(partner: Partner, session: Session): Promise<void> {
    const url = this.context.endpoint(partner, 'sessions', 'RECEIVER')
    if (!url) return
    await this.push(partner, 'PUT', joinUrl(url, session.country_code, session.party_id, session.id), session)
  }

  private async sessionStopped(rid: string | undefined, payload: Record<string, unknown>): Promise<void> {
    const transactionId = payload.transactionId
    if (typeof transactionId !== 'string' && typeof transactionId !== 'number') return
    const entry = rid
      ? this.sessions.get(sessionIdFor(rid, String(transactionId)))
      : [...this.sessions.values()].find((candidate) => candidate.transactionId === String(transactionId))
    if (entry?.session.status !== 'ACTIVE') return
    const end = typeof payload.t === 'number' ? payload.t : Date.now()
    const start = parseDateTime(entry.session.start_date_time) ?? end
    const energyWh =
      typeof payload.energyWh === 'number'
        ? payload.energyWh
        : typeof payload.meterStopWh === 'number' && entry.meterStartWh !== undefined
          ? payload.meterStopWh - entry.meterStartWh
          : entry.session.kwh * 1000
    const kwh = Math.max(0, Math.round(energyWh) / 1000)
    const hours = Math.max(0, Math.round((end - start) / 36) / 100_000)
    const tariff = this.tariffFor()
    const cost = costOf(tariff, kwh, hours)
    const periods = [
      withoutUndefined({
        start_date_time: stamp(start),
        dimensions: [
          { type: 'ENERGY' as const, volume: kwh },
          { type: 'TIME' as const, volume: hours },
        ],
        tariff_id: tariff?.id,
      }),
    ]
    const session = strict.session.parse({
      ...entry.session,
      end_date_time: stamp(end),
      kwh,
      charging_periods: periods,
      total_cost: { excl_vat: cost.excl_vat, incl_vat: cost.incl_vat },
      status: 'COMPLETED',
      last_updated: stamp(Date.now()),
    })
    let updated: CpoSession = { ...entry, session }
    this.profiles.delete(session.id)
    // The completed session is stored last: until then a redelivered event does all of this
    // again (the same PUT, the same CDR: an eMSP takes a CDR it has as it is).
    const partner = updated.partner ? await this.context.partners.get(updated.partner) : undefined
    if (partner?.state === 'registered') await this.pushSession(partner, session)
    // A CDR made before (a redelivered event) is sent as it was: CDRs never change.
    const cdr = this.cdrs.get(session.id) ?? this.cdrFor(updated, end, kwh, hours, tariff, cost, periods)
    if (cdr) {
      this.cdrs.set(cdr.id, cdr)
      await this.context.objects.put(`ccdr.${cdr.id}`, cdr)
      const url =
        partner?.state === 'registered' ? this.context.endpoint(partner, 'cdrs', 'RECEIVER') : undefined
      if (partner && url) {
        const answer = await this.push(partner, 'POST', url, cdr)
        const location = answer?.headers.get('location')
        if (location) updated = { ...updated, cdrLocation: location }
      }
    }
    await this.saveSession(updated)
  }

  private tariffFor(): Tariff | undefined {
    const id = this.context.config.tariff_id ?? this.tariffs[0]?.id
    return this.tariffs.find((tariff) => tariff.id === id)
  }

  private cdrFor(
    entry: CpoSession,
    end: number,
    kwh: number,
    hours: number,
    tariff: Tariff | undefined,
    cost: ReturnType<typeof costOf>,
    periods: Session['charging_periods'],
  ): Cdr | undefined {
    const found = this.evseOf(entry.rid)
    if (!found) return undefined
    const { location, evse } = found
    const connector = evse.connectors[0]!
    const { session } = entry
    const result = strict.cdr.safeParse(
      withoutUndefined({
        country_code: session.country_code,
        party_id: session.party_id,
        id: session.id,
        start_date_time: session.start_date_time,
        end_date_time: stamp(end),
        session_id: session.id,
        cdr_token: session.cdr_token,
        auth_method: session.auth_method,
        authorization_reference: session.authorization_reference,
        cdr_location: withoutUndefined({
          id: location.id,
          name: location.name,
          address: location.address.slice(0, 45),
          city: location.city,
          postal_code: location.postal_code,
          state: location.state,
          country: location.country,
          coordinates: location.coordinates,
          evse_uid: evse.uid,
          evse_id: evse.evse_id ?? evse.uid,
          connector_id: connector.id,
          connector_standard: connector.standard,
          connector_format: connector.format,
          connector_power_type: connector.power_type,
        }),
        currency: session.currency,
        tariffs: tariff ? [tariff] : undefined,
        charging_periods: periods,
        total_cost: { excl_vat: cost.excl_vat, incl_vat: cost.incl_vat },
        total_fixed_cost: tariff ? { excl_vat: cost.fixed } : undefined,
        total_energy: kwh,
        total_energy_cost: tariff ? { excl_vat: cost.energy } : undefined,
        total_time: hours,
        total_time_cost: tariff ? { excl_vat: cost.time } : undefined,
        last_updated: stamp(Date.now()),
      }),
    )
    if (!result.success) {
      this.context.logger.error(
        { session: session.id, err: describeIssues(result.error) },
        'ocpi CDR does not fit the schema',
      )
      return undefined
    }
    return result.data
  }

  /** Active sessions' energy so far, pushed as a PATCH. */
  private async updateSessions(): Promise<void> {
    const { dataPlane } = this.context
    if (!dataPlane.readTelemetry) return
    for (const entry of this.sessions.values()) {
      if (entry.session.status !== 'ACTIVE' || entry.meterStartWh === undefined || !entry.partner) continue
      const since = parseDateTime(entry.session.start_date_time) ?? Date.now()
      const readings = await dataPlane
        .readTelemetry('evse', entry.rid, ['energy_import'], { since })
        .catch(() => [])
      const last = readings.at(-1)
      if (!last) continue
      const kwh = Math.max(0, Math.round(last.v - entry.meterStartWh) / 1000)
      if (kwh === entry.session.kwh) continue
      const session = { ...entry.session, kwh, last_updated: stamp(Date.now()) }
      await this.saveSession({ ...entry, session })
      const partner = await this.context.partners.get(entry.partner)
      const url =
        partner?.state === 'registered' ? this.context.endpoint(partner, 'sessions', 'RECEIVER') : undefined
      if (partner && url)
        await this.push(partner, 'PATCH', joinUrl(url, session.country_code, session.party_id, session.id), {
          kwh,
          last_updated: session.last_updated,
        })
    }
  }

  private onSessions(request: OcpiRequest): Promise<OcpiReply> {
    const caller = request.caller!
    const [sessionId, action, ...rest] = request.segments
    if (request.method === 'PUT' && sessionId && action === 'charging_preferences' && rest.length === 0) {
      const entry = this.sessions.get(sessionId)
      if (
        !entry ||
        !this.context.owns(caller, entry.session.cdr_token.country_code, entry.session.cdr_token.party_id)
      )
        return Promise.resolve(fail(404, 2000, 'unknown session'))
      // Preferences are not passed to the stations (OCPP has no way to take them here).
      return Promise.resolve(ok('NOT_POSSIBLE'))
    }
    if (request.method !== 'GET' || sessionId !== undefined)
      return Promise.resolve(fail(405, 2000, 'sessions: GET the list (Sender interface)'))
    const mine = [...this.sessions.values()]
      .map((entry) => entry.session)
      .filter((session) =>
        this.context.owns(caller, session.cdr_token.country_code, session.cdr_token.party_id),
      )
      .sort((a, b) => (a.last_updated < b.last_updated ? -1 : a.last_updated > b.last_updated ? 1 : 0))
    return Promise.resolve(
      paginate(mine, request, {
        maxLimit: this.context.config.page_limit,
        updated: (session) => parseDateTime(session.last_updated) ?? 0,
        publicUrl: this.context.publicUrl(`${BASE}/sessions`),
      }),
    )
  }

  private onCdrs(request: OcpiRequest): Promise<OcpiReply> {
    const caller = request.caller!
    if (request.method !== 'GET' || request.segments.length > 0)
      return Promise.resolve(fail(405, 2000, 'cdrs: GET the list (Sender interface)'))
    const mine = [...this.cdrs.values()]
      .filter((cdr) => this.context.owns(caller, cdr.cdr_token.country_code, cdr.cdr_token.party_id))
      .sort((a, b) => (a.last_updated < b.last_updated ? -1 : a.last_updated > b.last_updated ? 1 : 0))
    return Promise.resolve(
      paginate(mine, request, {
        maxLimit: this.context.config.page_limit,
        updated: (cdr) => parseDateTime(cdr.last_updated) ?? 0,
        publicUrl: this.context.publicUrl(`${BASE}/cdrs`),
      }),
    )
  }

  // ---- tariffs -------------------------------------------------------------------------------------

  private async loadTariffs(): Promise<void> {
    const { config, objects } = this.context
    const tariffs: Tariff[] = []
    for (const configured of config.tariffs) {
      const body = { ...configured, country_code: config.country_code, party_id: config.party_id }
      const digest = sha256(JSON.stringify(body))
      const key = `ctar.${keyToken(configured.id)}`
      const stored = await objects.get<{ digest: string; last_updated: string }>(key)
      let lastUpdated = stored?.last_updated
      if (!stored || stored.digest !== digest) {
        lastUpdated = stamp(Date.now())
        await objects.put(key, { digest, last_updated: lastUpdated })
      }
      tariffs.push(strict.tariff.parse({ ...body, last_updated: lastUpdated }))
    }
    this.tariffs = tariffs
  }

  private onTariffs(request: OcpiRequest): Promise<OcpiReply> {
    if (request.method !== 'GET' || request.segments.length > 0)
      return Promise.resolve(fail(405, 2000, 'tariffs: GET the list (Sender interface)'))
    return Promise.resolve(
      paginate(this.tariffs, request, {
        maxLimit: this.context.config.page_limit,
        updated: (tariff) => parseDateTime(tariff.last_updated) ?? 0,
        publicUrl: this.context.publicUrl(`${BASE}/tariffs`),
      }),
    )
  }

  // ---- tokens pushed by eMSPs, and token authorisation -------------------------------------------

  private tokenKey(token: { country_code: string; party_id: string; uid: string; type: string }): string {
    return `tok.${ownerKey(token.country_code, token.party_id)}.${keyToken(token.uid)}.${token.type}`
  }

  private findToken(uid: string): ReceivedToken | undefined {
    for (const { token } of this.tokens.values()) if (token.uid === uid) return token
    return undefined
  }

  private async onTokens(request: OcpiRequest): Promise<OcpiReply> {
    const [countryCode, partyId, uid, ...rest] = request.segments
    if (!countryCode || !partyId || !uid || rest.length > 0)
      return fail(404, 2000, 'tokens: /{country_code}/{party_id}/{token_uid}[?type=]')
    const caller = request.caller!
    const owned = this.context.owns(caller, countryCode, partyId)
    const type = request.query.get('type') ?? 'RFID'
    const key = this.tokenKey({ country_code: countryCode, party_id: partyId, uid, type })
    if (request.method === 'GET') {
      const stored = owned ? this.tokens.get(key) : undefined
      return stored ? ok(stored.token) : fail(404, 2004, `unknown token '${uid.slice(0, 36)}'`)
    }
    if (!owned) return fail(404, 2000, `${countryCode}/${partyId} is not one of your parties`)
    if (request.method === 'PUT') {
      const parsed = lenient.token.safeParse(request.body)
      if (!parsed.success) return fail(200, 2001, `invalid Token: ${describeIssues(parsed.error)}`)
      const token = parsed.data
      if (
        upper(token.country_code) !== upper(countryCode) ||
        upper(token.party_id) !== upper(partyId) ||
        token.uid !== uid ||
        token.type !== type
      )
        return fail(200, 2001, 'country_code, party_id, uid and type of the Token must be those of the URL')
      const created = !this.tokens.has(key)
      const stored: StoredToken = {
        token: { ...token, last_updated: token.last_updated ?? stamp(Date.now()) },
        partner: caller.partner,
      }
      await this.context.objects.put(key, stored)
      this.tokens.set(key, stored)
      return ok(undefined, { http: created ? 201 : 200 })
    }
    if (request.method === 'PATCH') {
      const parsed = lenient.tokenPatch.safeParse(request.body)
      if (!parsed.success) return fail(200, 2001, `invalid Token PATCH: ${describeIssues(parsed.error)}`)
      const current = this.tokens.get(key)
      if (!current) return fail(404, 2004, `unknown token '${uid.slice(0, 36)}': PUT it first`)
      const patch = parsed.data as Partial<ReceivedToken>
      const stored: StoredToken = {
        ...current,
        token: {
          ...current.token,
          ...patch,
          country_code: current.token.country_code,
          party_id: current.token.party_id,
          uid,
          type: current.token.type,
        },
      }
      await this.context.objects.put(key, stored)
      this.tokens.set(key, stored)
      return ok()
    }
    return fail(405, 2000, `tokens: ${request.method} is not allowed`)
  }

  /** The node asks (e.g. OCPP Authorize): may this token charge at this station/EVSE? */
  async authorize(request: TokenAuthorizationRequest): Promise<TokenAuthorization> {
    const now = Date.now()
    const token = this.findToken(request.token)
    const remember = (found: ReceivedToken, method: Session['auth_method'], reference?: string) => {
      // A session the eMSP started by command stays COMMAND when the station then authorises it.
      const earlier = this.recentAuth.get(request.rid)
      if (earlier?.method === 'COMMAND' && earlier.token.uid === found.uid && now - earlier.at < 15 * 60_000)
        return
      this.recentAuth.set(request.rid, { token: found, at: now, method, ...(reference ? { reference } : {}) })
    }
    if (token && token.whitelist !== 'NEVER') {
      if (!token.valid) return { status: 'Blocked' }
      remember(token, 'WHITELIST')
      return { status: 'Accepted', until: now + 60_000 }
    }
    // NEVER-whitelisted or unknown: ask the eMSP(s) in real time.
    const owners = token
      ? [await this.context.partnerOfParty(token.country_code, token.party_id)].filter(
          (p): p is Partner => p !== undefined,
        )
      : await this.context.registered(['EMSP'])
    const index = request.kind === 'evse' ? this.evseIndex.get(request.rid) : undefined
    const station = request.kind === 'station' ? request.rid : index?.station
    const references =
      station !== undefined
        ? withoutUndefined({
            location_id: ocpiIdFor(station),
            evse_uids: request.kind === 'evse' ? [ocpiIdFor(request.rid)] : undefined,
          })
        : undefined
    for (const partner of owners) {
      const url = this.context.endpoint(partner, 'tokens', 'SENDER')
      if (!url) continue
      try {
        const answer = await this.context.send(
          partner,
          'POST',
          `${joinUrl(url, request.token, 'authorize')}?type=${token?.type ?? 'RFID'}`,
          {
            ...(references ? { body: references } : {}),
            schema: lenient.authorizationInfo,
            ...(this.context.partyOf(partner, 'EMSP') ? { to: this.context.partyOf(partner, 'EMSP')! } : {}),
          },
        )
        const info = answer.data
        if (info.allowed === 'ALLOWED') {
          remember(info.token, 'AUTH_REQUEST', info.authorization_reference)
          return withoutUndefined({ status: 'Accepted' as const, reference: info.authorization_reference })
        }
        return {
          status: info.allowed === 'EXPIRED' ? 'Expired' : info.allowed === 'BLOCKED' ? 'Blocked' : 'Invalid',
        }
      } catch {
        // Unknown there (404 / 2004) or unreachable: the next eMSP.
      }
    }
    return {
      status: this.context.config.unknown_tokens === 'accept' ? 'Accepted' : token ? 'Invalid' : 'Unknown',
    }
  }

  // ---- commands ----------------------------------------------------------------------------------

  /** A response URL must be on the partner's own platform (no requests elsewhere on its behalf). */
  private onPartnerPlatform(partner: Partner | undefined, url: string): boolean {
    if (!partner) return false
    let origin: string
    try {
      origin = new URL(url).origin
    } catch {
      return false
    }
    const origins = new Set(
      [partner.versionsUrl, ...partner.endpoints.map((endpoint) => endpoint.url)].flatMap((known) => {
        try {
          return known ? [new URL(known).origin] : []
        } catch {
          return []
        }
      }),
    )
    return origins.has(origin)
  }

  private async onCommand(request: OcpiRequest): Promise<OcpiReply> {
    if (request.method !== 'POST') return fail(405, 2000, 'commands: POST only (Receiver interface)')
    const [type, ...rest] = request.segments
    if (!type || rest.length > 0 || !(COMMAND_TYPES as readonly string[]).includes(type))
      return fail(404, 2000, `commands: /{command}, one of ${COMMAND_TYPES.join(', ')}`)
    this.metric.commands.inc()
    const caller = request.caller!
    const partner = await this.context.partners.get(caller.partner)
    const command = type as CommandType
    const schema = {
      START_SESSION: lenient.startSession,
      STOP_SESSION: lenient.stopSession,
      UNLOCK_CONNECTOR: lenient.unlockConnector,
      RESERVE_NOW: lenient.reserveNow,
      CANCEL_RESERVATION: lenient.cancelReservation,
    }[command]
    const parsed = schema.safeParse(request.body)
    if (!parsed.success) return fail(200, 2001, `invalid ${command}: ${describeIssues(parsed.error)}`)
    const body = parsed.data as Record<string, unknown> & { response_url: string }
    if (!this.onPartnerPlatform(partner, body.response_url))
      return fail(200, 2001, 'response_url must be on your own platform (the host of your endpoints)')
    const { config } = this.context
    const response = (
      result: 'ACCEPTED' | 'REJECTED' | 'NOT_SUPPORTED' | 'UNKNOWN_SESSION',
      message?: string,
      code = 1000,
    ) => {
      const data = strict.commandResponse.parse(
        withoutUndefined({
          result,
          timeout: result === 'ACCEPTED' ? config.command_timeout : 0,
          message: message ? [{ language: 'en', text: message.slice(0, 512) }] : undefined,
        }),
      )
      return code === 1000 ? ok(data) : { code, message, data }
    }
    const id = crypto.randomUUID()
    const source = `ocpi:${caller.partner}`
    const resolveEvse = (locationId: string, evseUid: string | undefined): { rid: string } | string => {
      const station = this.locationIds.get(locationId)
      const location = station ? this.location(station) : undefined
      if (!station || !location || 'missing' in location) return 'unknown location'
      if (evseUid !== undefined) {
        const rid = this.evseUids.get(evseUid)
        return rid && this.evseIndex.get(rid)?.station === station ? { rid } : 'unknown EVSE'
      }
      const all = [...(this.evses.get(station)?.values() ?? [])]
      return all.length === 1 ? { rid: all[0]!.rid } : 'evse_uid is required: the location has several EVSEs'
    }
    const publish = async (
      rid: string,
      name: string,
      payload: Record<string, unknown>,
      pending: Omit<Pending, 'id' | 'rid' | 'partner' | 'responseUrl' | 'deadline'>,
    ) => {
      const record: Pending = {
        id,
        rid,
        partner: caller.partner,
        responseUrl: body.response_url,
        deadline: Date.now() + config.command_timeout * 1000,
        ...pending,
      }
      await this.context.objects.put(`ccmd.${id}`, record)
      this.track(record)
      await this.context.dataPlane.publishControl!('evse', rid, name, { request: id, source, ...payload })
    }
    switch (command) {
      case 'START_SESSION': {
        const token = body.token as ReceivedToken
        if (!this.context.owns(caller, token.country_code, token.party_id))
          return response('REJECTED', 'the token is not one of your parties')
        const target = resolveEvse(String(body.location_id), body.evse_uid as string | undefined)
        if (typeof target === 'string')
          return response('REJECTED', target, target === 'unknown location' ? 2003 : 1000)
        const reference = body.authorization_reference as string | undefined
        this.recentAuth.set(target.rid, {
          token,
          at: Date.now(),
          method: 'COMMAND',
          ...(reference ? { reference } : {}),
        })
        await publish(
          target.rid,
          'start_session',
          withoutUndefined({
            idTag: token.uid,
            tokenType: token.type,
            contract_id: token.contract_id,
            connector: 1,
            authorization_reference: reference,
          }),
          { type: command },
        )
        return response('ACCEPTED')
      }
      case 'STOP_SESSION': {
        const entry = this.sessions.get(String(body.session_id))
        if (
          entry?.session.status !== 'ACTIVE' ||
          !this.context.owns(caller, entry.session.cdr_token.country_code, entry.session.cdr_token.party_id)
        )
          return response('UNKNOWN_SESSION', 'no active session of yours by that id')
        await publish(
          entry.rid,
          'stop_session',
          { transactionId: entry.transactionId },
          { type: command, session: entry.session.id },
        )
        return response('ACCEPTED')
      }
      case 'UNLOCK_CONNECTOR': {
        const target = resolveEvse(String(body.location_id), String(body.evse_uid))
        if (typeof target === 'string')
          return response('REJECTED', target, target === 'unknown location' ? 2003 : 1000)
        if (body.connector_id !== '1') return response('REJECTED', 'unknown connector')
        await publish(target.rid, 'unlock_connector', { connector: 1 }, { type: command })
        return response('ACCEPTED')
      }
      case 'RESERVE_NOW': {
        const token = body.token as ReceivedToken
        if (!this.context.owns(caller, token.country_code, token.party_id))
          return response('REJECTED', 'the token is not one of your parties')
        const target = resolveEvse(String(body.location_id), body.evse_uid as string | undefined)
        if (typeof target === 'string')
          return response('REJECTED', target, target === 'unknown location' ? 2003 : 1000)
        const expires = parseDateTime(String(body.expiry_date)) ?? Date.now()
        const reservation = String(body.reservation_id)
        await this.context.objects.put(`resv.${caller.partner}.${keyToken(reservation)}`, {
          rid: target.rid,
          expires,
        })
        await publish(
          target.rid,
          'reserve_now',
          { reservation, idTag: token.uid, expires, connector: 1 },
          { type: command, reservation },
        )
        return response('ACCEPTED')
      }
      case 'CANCEL_RESERVATION': {
        const reservation = String(body.reservation_id)
        const known = await this.context.objects.get<{ rid: string }>(
          `resv.${caller.partner}.${keyToken(reservation)}`,
        )
        if (!known) return response('REJECTED', 'no reservation of yours by that id')
        await publish(known.rid, 'cancel_reservation', { reservation }, { type: command, reservation })
        return response('ACCEPTED')
      }
    }
  }

  /** Keep a command until its result comes, or time it out. */
  private track(pending: Pending): void {
    this.pending.set(pending.id, pending)
    const existing = this.timers.get(pending.id)
    if (existing) clearTimeout(existing)
    const timer = setTimeout(
      () => void this.finish(pending.id, { status: 'Timeout' }),
      Math.max(0, pending.deadline - Date.now()),
    )
    timer.unref?.()
    this.timers.set(pending.id, timer)
  }

  private async onResult(rid: string, type: string, payload: Record<string, unknown>): Promise<void> {
    let id: string | undefined
    if (typeof payload.request === 'string' && this.pending.has(payload.request)) id = payload.request
    const source = typeof payload.source === 'string' ? payload.source : undefined
    if (!id && source?.startsWith('ocpi:') && this.pending.has(source.slice(5))) id = source.slice(5)
    if (!id) return
    const pending = this.pending.get(id)!
    if (pending.rid !== rid) return
    // limit_result speaks for charging profiles only.
    if (type === 'limit_result' && pending.type !== 'SET_PROFILE' && pending.type !== 'CLEAR_PROFILE') return
    await this.finish(id, payload)
  }

  /** Post the command's outcome to the eMSP's response URL and forget the command. */
  private async finish(id: string, payload: Record<string, unknown>): Promise<void> {
    const pending = this.pending.get(id)
    if (!pending) return
    this.pending.delete(id)
    const timer = this.timers.get(id)
    if (timer) clearTimeout(timer)
    this.timers.delete(id)
    await this.context.objects.delete(`ccmd.${id}`)
    const partner = await this.context.partners.get(pending.partner)
    if (partner?.state !== 'registered') return
    const result = commandResult(payload)
    let body: unknown
    if (pending.type === 'SET_PROFILE' || pending.type === 'CLEAR_PROFILE') {
      const profileResult = result === 'ACCEPTED' ? 'ACCEPTED' : result === 'TIMEOUT' ? 'UNKNOWN' : 'REJECTED'
      if (
        pending.type === 'SET_PROFILE' &&
        profileResult === 'ACCEPTED' &&
        pending.session &&
        pending.profile
      )
        this.profiles.set(pending.session, { profile: pending.profile, start: Date.now() })
      if (pending.type === 'CLEAR_PROFILE' && profileResult === 'ACCEPTED' && pending.session)
        this.profiles.delete(pending.session)
      body = { result: profileResult }
    } else {
      body = strict.commandResult.parse(
        withoutUndefined({
          result,
          message:
            typeof payload.reason === 'string'
              ? [{ language: 'en', text: payload.reason.slice(0, 512) }]
              : undefined,
        }),
      )
    }
    await this.push(partner, 'POST', pending.responseUrl, body)
  }

  // ---- charging profiles -------------------------------------------------------------------------

  private async onChargingProfile(request: OcpiRequest): Promise<OcpiReply> {
    const [sessionId, ...rest] = request.segments
    if (!sessionId || rest.length > 0) return fail(404, 2000, 'chargingprofiles: /{session_id}')
    this.metric.commands.inc()
    const caller = request.caller!
    const partner = await this.context.partners.get(caller.partner)
    const { config } = this.context
    const entry = this.sessions.get(sessionId)
    const mine =
      entry !== undefined &&
      entry.session.status === 'ACTIVE' &&
      this.context.owns(caller, entry.session.cdr_token.country_code, entry.session.cdr_token.party_id)
    const response = (result: 'ACCEPTED' | 'NOT_SUPPORTED' | 'REJECTED' | 'TOO_OFTEN' | 'UNKNOWN_SESSION') =>
      ok(
        strict.chargingProfileResponse.parse({
          result,
          timeout: result === 'ACCEPTED' ? config.command_timeout : 0,
        }),
      )
    const responseUrl = request.method === 'PUT' ? undefined : request.query.get('response_url')
    if (request.method === 'GET' || request.method === 'DELETE') {
      if (!responseUrl) return fail(200, 2001, 'response_url is required')
      if (!this.onPartnerPlatform(partner, responseUrl))
        return fail(200, 2001, 'response_url must be on your own platform (the host of your endpoints)')
    }
    if (!mine || !entry) return response('UNKNOWN_SESSION')
    const found = this.evseOf(entry.rid)
    const connector = found?.evse.connectors[0]
    if (!found || !connector) return response('UNKNOWN_SESSION')
    const id = crypto.randomUUID()
    const track = async (type: Pending['type'], url: string, extra: Partial<Pending>) => {
      const record: Pending = {
        id,
        type,
        partner: caller.partner,
        responseUrl: url,
        rid: entry.rid,
        deadline: Date.now() + config.command_timeout * 1000,
        session: sessionId,
        ...extra,
      }
      await this.context.objects.put(`ccmd.${id}`, record)
      this.track(record)
    }
    switch (request.method) {
      case 'PUT': {
        const parsed = lenient.setChargingProfile.safeParse(request.body)
        if (!parsed.success)
          return fail(200, 2001, `invalid SetChargingProfile: ${describeIssues(parsed.error)}`)
        if (!this.onPartnerPlatform(partner, parsed.data.response_url))
          return fail(200, 2001, 'response_url must be on your own platform (the host of your endpoints)')
        const limit = limitFromProfile(parsed.data.charging_profile, Date.now(), connector)
        if ('reason' in limit) return response('REJECTED')
        await track('SET_PROFILE', parsed.data.response_url, {
          watts: limit.watts,
          profile: parsed.data.charging_profile,
        })
        await this.context.dataPlane.publishControl!(
          'evse',
          entry.rid,
          'limit_power',
          withoutUndefined({
            v: limit.watts,
            u: 'W',
            until: limit.until,
            source: `ocpi:${id}`,
            request: id,
          }),
        )
        return response('ACCEPTED')
      }
      case 'DELETE': {
        // Clearing is a limit at the EVSE's own maximum (§5 has no "no limit").
        const phases =
          { AC_1_PHASE: 1, AC_2_PHASE: 2, AC_2_PHASE_SPLIT: 2, AC_3_PHASE: 3, DC: 1 }[connector.power_type] ??
          1
        const watts = connector.max_electric_power ?? connector.max_voltage * connector.max_amperage * phases
        await track('CLEAR_PROFILE', responseUrl!, { watts })
        await this.context.dataPlane.publishControl!('evse', entry.rid, 'limit_power', {
          v: watts,
          u: 'W',
          source: `ocpi:${id}`,
          request: id,
        })
        return response('ACCEPTED')
      }
      case 'GET': {
        const active = this.profiles.get(sessionId)
        const url = responseUrl!
        setTimeout(() => {
          if (partner?.state !== 'registered') return
          const result = withoutUndefined({
            result: 'ACCEPTED' as const,
            profile: active
              ? { start_date_time: stamp(active.start), charging_profile: active.profile }
              : undefined,
          })
          void this.push(partner, 'POST', url, strict.activeChargingProfileResult.parse(result))
        }, 10).unref?.()
        return response('ACCEPTED')
      }
      default:
        return fail(405, 2000, `chargingprofiles: ${request.method} is not allowed`)
    }
  }
}

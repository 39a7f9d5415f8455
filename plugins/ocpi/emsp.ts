/**
 * The eMSP role. Receives what CPOs push (locations/EVSEs/connectors, sessions, CDRs, tariffs;
 * PUT/PATCH, validated leniently, the partner's own objects only) and pulls the same with
 * pagination, resuming an interrupted pull from the page it reached (progress in KV after every
 * page). What it learns becomes standing data (`station`, `evse`), telemetry and events
 * (`status`, `session_started`, `session_ended`, `cdr`; see normalise.ts). It issues driver
 * tokens (config `tokens`), pushes them to CPOs, serves them for pulls and answers real-time
 * authorisation. Control commands on the EVSEs it learnt (`limit_power`, `start_session`,
 * `stop_session`, `unlock_connector`, `reserve_now`, `cancel_reservation`) go to the CPO as
 * charging profiles and commands; the CPO's answer and its asynchronous result come back as
 * `control_result` events (`stage` `response`, then `result`).
 */
import { randomUUID } from 'node:crypto'
import type { ResourceKind } from '../../data-plane/index.ts'
import type { ControlMessage } from '../api.ts'
import { OcpiActionInputError } from './errors.ts'
import {
  locationResources,
  numberEvses,
  profileFromLimit,
  sessionTelemetry,
  stationRidFor,
  withoutUndefined,
} from './normalise.ts'
import type { OcpiRole, RoleContext } from './ocpi.ts'
import { fail, type OcpiReply, type OcpiRequest, ok, paginate, type Route } from './server.ts'
import { keyToken, type Partner, type PullProgress, sha256 } from './state.ts'
import {
  COMMAND_TYPES,
  type CommandType,
  describeIssues,
  formatDateTime,
  type InterfaceRole,
  type ModuleId,
  OCPI_VERSION,
  ocpi221,
  parseDateTime,
  type ReceivedCdr,
  type ReceivedEvse,
  type ReceivedLocation,
  type ReceivedSession,
  type ReceivedTariff,
  type Token,
} from './v221.ts'

const BASE = `/ocpi/emsp/${OCPI_VERSION}`
const lenient = ocpi221.lenient
const strict = ocpi221.strict

interface StoredLocation {
  partner: string
  location: ReceivedLocation
  /** EVSE uid → n of its `evse` resource `<station>-<n>`. */
  numbers: Record<string, number>
}

interface StoredSession {
  partner: string
  session: ReceivedSession
  started?: boolean
  ended?: boolean
  /** Start of the latest charging period already published as telemetry. */
  periodsUpTo?: number
}

interface PendingCommand {
  partner: string
  command: string
  rid: string
  created: number
  /** `profile`: a charging-profile request; `command`: an OCPI command. */
  kind: 'command' | 'profile'
}

/** Data-plane command → OCPI command. */
const COMMANDS: Record<string, CommandType> = {
  start_session: 'START_SESSION',
  stop_session: 'STOP_SESSION',
  unlock_connector: 'UNLOCK_CONNECTOR',
  reserve_now: 'RESERVE_NOW',
  cancel_reservation: 'CANCEL_RESERVATION',
}
const PULL_MODULES = ['locations', 'tariffs', 'sessions', 'cdrs'] as const
type PullModule = (typeof PULL_MODULES)[number]
const REQUEST_ID = /^[A-Za-z0-9_-]{1,64}$/
const upper = (value: string) => value.toUpperCase()
const ownerKey = (countryCode: string, partyId: string) =>
  `${keyToken(upper(countryCode))}.${keyToken(upper(partyId))}`

/** Run `work` on every item, at most `limit` at a time. */
async function eachLimited<T>(
  items: readonly T[],
  limit: number,
  work: (item: T) => Promise<void>,
): Promise<void> {
  let index = 0
  const runners = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (index < items.length) await work(items[index++]!)
  })
  await Promise.all(runners)
}

export class EmspRole implements OcpiRole {
  readonly name = 'EMSP' as const
  private readonly pulling = new Map<string, Promise<unknown>>()
  private pullTimer: ReturnType<typeof setInterval> | undefined
  private sweepTimer: ReturnType<typeof setInterval> | undefined
  /** Driver tokens with the time each last changed. */
  private tokens: Token[] = []
  private readonly counts = { locations: 0, sessions: 0, cdrs: 0, tariffs: 0, commands: 0 }
  private readonly metric

  constructor(private readonly context: RoleContext) {
    this.metric = {
      received: context.metrics.counter(
        'emsp_objects_received_total',
        'OCPI objects received by the eMSP role',
      ),
      invalid: context.metrics.counter(
        'emsp_objects_invalid_total',
        'OCPI objects the eMSP role refused as invalid',
      ),
    }
  }

  endpoints(): { identifier: ModuleId; role: InterfaceRole; path: string }[] {
    return [
      { identifier: 'locations', role: 'RECEIVER', path: `${BASE}/locations` },
      { identifier: 'sessions', role: 'RECEIVER', path: `${BASE}/sessions` },
      { identifier: 'cdrs', role: 'RECEIVER', path: `${BASE}/cdrs` },
      { identifier: 'tariffs', role: 'RECEIVER', path: `${BASE}/tariffs` },
      { identifier: 'tokens', role: 'SENDER', path: `${BASE}/tokens` },
      { identifier: 'commands', role: 'SENDER', path: `${BASE}/commands` },
      { identifier: 'chargingprofiles', role: 'SENDER', path: `${BASE}/chargingprofiles` },
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
      route('commands', (request) => this.onCommandResult(request)),
      route('chargingprofiles', (request) => this.onProfileResult(request)),
    ]
  }

  async start(_options: { signal?: AbortSignal }): Promise<void> {
    const changed = await this.loadTokens()
    const { dataPlane, config } = this.context
    dataPlane.onControl({ kinds: ['evse'], commands: ['limit_power', ...Object.keys(COMMANDS)] }, (message) =>
      this.onControl(message),
    )
    // A pull cut short (a crash, a stop) resumes from the page it reached.
    for (const partner of await this.context.registered(['CPO'])) {
      const unfinished = await this.context.objects.values<PullProgress>(`pull.${partner.id}.*`)
      if (unfinished.some(({ value }) => value.completedAt === undefined)) this.pullInBackground(partner)
      if (changed.length > 0) void this.pushTokens(partner, changed)
    }
    if (config.pull_interval > 0) {
      this.pullTimer = setInterval(() => void this.pullAll(), config.pull_interval * 1000)
      this.pullTimer.unref?.()
    }
    this.sweepTimer = setInterval(() => void this.sweepCommands(), 60_000)
    this.sweepTimer.unref?.()
  }

  async stop(): Promise<void> {
    if (this.pullTimer) clearInterval(this.pullTimer)
    if (this.sweepTimer) clearInterval(this.sweepTimer)
    await Promise.allSettled([...this.pulling.values()])
  }

  status(): Record<string, unknown> {
    return { received: { ...this.counts }, tokens: this.tokens.length, pulling: [...this.pulling.keys()] }
  }

  async onRegistered(partner: Partner): Promise<void> {
    if (!partner.roles.some((role) => role.role === 'CPO')) return
    await this.pushTokens(partner, this.tokens).catch((error: Error) =>
      this.context.logger.warn({ partner: partner.id, err: error.message }, 'ocpi token push failed'),
    )
    this.pullInBackground(partner)
  }

  actions(): Record<string, (input: Record<string, unknown>) => Promise<unknown>> {
    return {
      pull: async (input) => {
        const modules = input.module === undefined ? [...PULL_MODULES] : [String(input.module)]
        for (const module of modules) {
          if (!(PULL_MODULES as readonly string[]).includes(module))
            throw new OcpiActionInputError(`module is one of ${PULL_MODULES.join(', ')}`)
        }
        const partners = await this.cposFor(input.partner)
        const results: Record<string, unknown> = {}
        for (const partner of partners)
          results[partner.id] = await this.pull(partner, modules as PullModule[])
        return { pulled: results }
      },
      send_command: async (input) => {
        const rid = input.evse
        const command = typeof input.command === 'string' ? input.command.toLowerCase() : ''
        if (typeof rid !== 'string' || rid === '')
          throw new OcpiActionInputError('evse (the evse rid) is required')
        if (!(command in COMMANDS) && command !== 'limit_power')
          throw new OcpiActionInputError(
            `command is one of ${[...Object.keys(COMMANDS), 'limit_power'].join(', ')}`,
          )
        const target = await this.target(rid)
        if (!target) throw new OcpiActionInputError(`'${rid}' is not an EVSE learnt over OCPI`)
        const request = randomUUID()
        const response = await this.command(target, command, input, request)
        return { evse: rid, command, request, ...response }
      },
      push_tokens: async (input) => {
        const partners = await this.cposFor(input.partner)
        for (const partner of partners) await this.pushTokens(partner, this.tokens)
        return { partners: partners.map((partner) => partner.id), tokens: this.tokens.length }
      },
    }
  }

  private async cposFor(partnerId: unknown): Promise<Partner[]> {
    const cpos = await this.context.registered(['CPO'])
    if (partnerId === undefined) return cpos
    const found = cpos.filter((partner) => partner.id === partnerId)
    if (found.length === 0) throw new OcpiActionInputError(`no registered CPO partner '${String(partnerId)}'`)
    return found
  }

  // ---- driver tokens ---------------------------------------------------------------------------

  /** Tokens from the config, each with the time it last changed; returns those that changed. */
  private async loadTokens(): Promise<Token[]> {
    const { config, objects } = this.context
    const changed: Token[] = []
    const tokens: Token[] = []
    for (const [uid, entry] of Object.entries(config.tokens)) {
      const body = withoutUndefined({
        country_code: config.country_code,
        party_id: config.party_id,
        uid,
        type: entry.type,
        contract_id: entry.contract_id,
        visual_number: entry.visual_number,
        issuer: entry.issuer ?? config.business_name.slice(0, 64),
        group_id: entry.group_id,
        valid: entry.valid,
        whitelist: entry.whitelist,
        language: entry.language,
      })
      const digest = sha256(JSON.stringify(body))
      const key = `etok.${keyToken(uid)}`
      const stored = await objects.get<{ digest: string; last_updated: string }>(key)
      let lastUpdated = stored?.last_updated
      if (!stored || stored.digest !== digest) {
        lastUpdated = formatDateTime(Date.now() - (Date.now() % 1000))
        await objects.put(key, { digest, last_updated: lastUpdated })
      }
      const token = strict.token.parse({ ...body, last_updated: lastUpdated })
      tokens.push(token)
      if (!stored || stored.digest !== digest) changed.push(token)
    }
    this.tokens = tokens
    return changed
  }

  private async pushTokens(partner: Partner, tokens: readonly Token[]): Promise<void> {
    const url = this.context.endpoint(partner, 'tokens', 'RECEIVER')
    if (!url) return
    const to = this.context.partyOf(partner, 'CPO')
    for (const token of tokens) {
      await this.context
        .send(
          partner,
          'PUT',
          `${joinUrl(url, token.country_code, token.party_id, token.uid)}?type=${token.type}`,
          {
            body: token,
            ...(to ? { to } : {}),
          },
        )
        .catch((error: Error) =>
          this.context.logger.warn(
            { partner: partner.id, token: token.uid, err: error.message },
            'ocpi token push failed',
          ),
        )
    }
  }

  private onTokens(request: OcpiRequest): Promise<OcpiReply> {
    const [uid, action, ...rest] = request.segments
    if (request.method === 'GET' && uid === undefined) {
      return Promise.resolve(
        paginate(this.tokens, request, {
          maxLimit: this.context.config.page_limit,
          updated: (token) => parseDateTime(token.last_updated) ?? 0,
          publicUrl: this.context.publicUrl(`${BASE}/tokens`),
        }),
      )
    }
    if (request.method === 'POST' && uid !== undefined && action === 'authorize' && rest.length === 0) {
      const type = request.query.get('type') ?? 'RFID'
      const token = this.tokens.find((candidate) => candidate.uid === uid && candidate.type === type)
      if (!token)
        return Promise.resolve(fail(404, 2004, `unknown token '${uid.slice(0, 36)}' (${type.slice(0, 16)})`))
      let location: { location_id: string; evse_uids?: string[] } | undefined
      if (request.body !== undefined && request.body !== null) {
        const parsed = lenient.locationReferences.safeParse(request.body)
        if (!parsed.success)
          return Promise.resolve(
            fail(200, 2001, `invalid LocationReferences: ${describeIssues(parsed.error)}`),
          )
        location = parsed.data
      }
      const allowed = token.valid ? 'ALLOWED' : 'BLOCKED'
      return Promise.resolve(
        ok(
          strict.authorizationInfo.parse(
            withoutUndefined({
              allowed,
              token,
              location,
              authorization_reference: randomUUID().replaceAll('-', '').slice(0, 36),
            }),
          ),
        ),
      )
    }
    return Promise.resolve(
      fail(405, 2000, `tokens: ${request.method} ${request.segments.length} segments is not supported`),
    )
  }

  // ---- locations --------------------------------------------------------------------------------

  private async onLocations(request: OcpiRequest): Promise<OcpiReply> {
    const [countryCode, partyId, locationId, evseUid, connectorId, ...rest] = request.segments
    if (!countryCode || !partyId || !locationId || rest.length > 0)
      return fail(
        404,
        2000,
        'locations: /{country_code}/{party_id}/{location_id}[/{evse_uid}[/{connector_id}]]',
      )
    const caller = request.caller!
    const owned = this.context.owns(caller, countryCode, partyId)
    const key = `loc.${ownerKey(countryCode, partyId)}.${keyToken(locationId)}`
    if (request.method === 'GET') {
      const stored = owned ? await this.context.objects.get<StoredLocation>(key) : undefined
      const evse = evseUid
        ? stored?.location.evses?.find((candidate) => candidate.uid === evseUid)
        : undefined
      const connector = connectorId
        ? evse?.connectors.find((candidate) => candidate.id === connectorId)
        : undefined
      const found = connectorId ? connector : evseUid ? evse : stored?.location
      return found ? ok(found) : fail(404, 2003, 'unknown location, EVSE or connector')
    }
    if (request.method !== 'PUT' && request.method !== 'PATCH')
      return fail(405, 2000, `locations: ${request.method} is not allowed`)
    if (!owned) return fail(404, 2000, `${countryCode}/${partyId} is not one of your parties`)
    const partner = caller.partner
    const level = connectorId ? 'connector' : evseUid ? 'evse' : 'location'
    const now = Date.now()
    const stamp = formatDateTime(now - (now % 1000))

    if (request.method === 'PUT' && level === 'location') {
      const parsed = lenient.location.safeParse(request.body)
      if (!parsed.success) return this.invalid(`invalid Location: ${describeIssues(parsed.error)}`)
      const location = parsed.data
      if (
        !this.same(location.country_code, countryCode) ||
        !this.same(location.party_id, partyId) ||
        location.id !== locationId
      )
        return this.invalid('country_code, party_id and id of the Location must be those of the URL')
      const created = await this.storeLocation(partner, location, stamp)
      return ok(undefined, { http: created ? 201 : 200 })
    }

    const schema =
      request.method === 'PUT'
        ? level === 'evse'
          ? lenient.evse
          : lenient.connector
        : level === 'location'
          ? lenient.locationPatch
          : level === 'evse'
            ? lenient.evsePatch
            : lenient.connectorPatch
    const parsed = schema.safeParse(request.body)
    if (!parsed.success)
      return this.invalid(`invalid ${level} ${request.method}: ${describeIssues(parsed.error)}`)
    const body = parsed.data as Record<string, unknown>
    if (request.method === 'PUT' && level === 'evse' && body.uid !== evseUid)
      return this.invalid('the uid of the EVSE must be that of the URL')
    if (request.method === 'PUT' && level === 'connector' && body.id !== connectorId)
      return this.invalid('the id of the connector must be that of the URL')
    const lastUpdated = (body.last_updated as string | undefined) ?? stamp
    let outcome: 'unknown' | 'created' | 'updated' = 'unknown'
    let previous: StoredLocation | undefined
    // Standing data first, then the stored object: what the store holds is on the data plane
    // (a crash in between repeats the standing-data write on the next push or pull).
    const next = await this.context.objects.update<StoredLocation>(key, async (current) => {
      previous = current
      if (!current) return undefined
      const location = structuredClone(current.location)
      location.last_updated = lastUpdated
      if (level === 'location') {
        const { evses, ...fields } = body as Partial<ReceivedLocation>
        Object.assign(location, fields)
        for (const evse of evses ?? []) upsertEvse(location, evse)
        outcome = 'updated'
      } else {
        const evses = location.evses ?? []
        location.evses = evses
        const evse = evses.find((candidate) => candidate.uid === evseUid)
        if (level === 'evse') {
          if (request.method === 'PUT') {
            outcome = evse ? 'updated' : 'created'
            upsertEvse(location, { ...(body as ReceivedEvse), last_updated: lastUpdated })
          } else {
            if (!evse) return current
            Object.assign(evse, body)
            outcome = 'updated'
          }
        } else {
          if (!evse) return current
          evse.last_updated = lastUpdated
          const index = evse.connectors.findIndex((candidate) => candidate.id === connectorId)
          if (request.method === 'PUT') {
            const connector = { ...(body as ReceivedEvse['connectors'][number]), last_updated: lastUpdated }
            if (index >= 0) evse.connectors[index] = connector
            else evse.connectors.push(connector)
            outcome = index >= 0 ? 'updated' : 'created'
          } else {
            if (index < 0) return current
            Object.assign(evse.connectors[index]!, body)
            outcome = 'updated'
          }
        }
      }
      const changed = { ...current, location, numbers: numberEvses(location.evses, current.numbers) }
      await this.syncLocation(partner, current, changed, level === 'location' ? undefined : evseUid)
      return changed
    })
    if (outcome === 'unknown' || !next || !previous)
      return fail(404, 2003, 'unknown location, EVSE or connector')
    this.metric.received.inc()
    return ok(undefined, { http: outcome === 'created' ? 201 : 200 })
  }

  private same(a: string, b: string): boolean {
    return upper(a) === upper(b)
  }

  private invalid(message: string): OcpiReply {
    this.metric.invalid.inc()
    return fail(200, 2001, message)
  }

  /** A whole Location (PUT or pulled). Returns true when it is new. */
  private async storeLocation(partner: string, location: ReceivedLocation, stamp: string): Promise<boolean> {
    const key = `loc.${ownerKey(location.country_code, location.party_id)}.${keyToken(location.id)}`
    let previous: StoredLocation | undefined
    // Standing data first, then the stored object (see onLocations).
    await this.context.objects.update<StoredLocation>(key, async (current) => {
      previous = current
      const copy = { ...location, last_updated: location.last_updated ?? stamp }
      const next = { partner, location: copy, numbers: numberEvses(copy.evses, current?.numbers ?? {}) }
      await this.syncLocation(partner, current, next, undefined)
      return next
    })
    this.counts.locations += previous ? 0 : 1
    this.metric.received.inc()
    return previous === undefined
  }

  /** Standing data and status events for what changed in a location (one EVSE, or all). */
  private async syncLocation(
    partner: string,
    previous: StoredLocation | undefined,
    next: StoredLocation,
    onlyEvse: string | undefined,
  ): Promise<void> {
    const { dataPlane } = this.context
    const { station, evses } = locationResources(next.location, next.numbers, partner)
    if (onlyEvse === undefined) await dataPlane.upsertResource(station)
    const before = new Map((previous?.location.evses ?? []).map((evse) => [evse.uid, evse]))
    for (const evse of evses) {
      if (onlyEvse !== undefined && evse.uid !== onlyEvse) continue
      const old = before.get(evse.uid)
      if (old && JSON.stringify(old) === JSON.stringify(next.location.evses?.find((e) => e.uid === evse.uid)))
        continue
      await dataPlane.upsertResource(evse.resource)
      if (old && old.status !== evse.status) {
        await dataPlane.publishEvent('evse', evse.resource.rid, 'status', {
          status: evse.status,
          source: 'ocpi',
          partner,
          t: Date.now(),
        })
      }
    }
  }

  // ---- sessions ---------------------------------------------------------------------------------

  private async onSessions(request: OcpiRequest): Promise<OcpiReply> {
    const [countryCode, partyId, sessionId, ...rest] = request.segments
    if (!countryCode || !partyId || !sessionId || rest.length > 0)
      return fail(404, 2000, 'sessions: /{country_code}/{party_id}/{session_id}')
    const caller = request.caller!
    const owned = this.context.owns(caller, countryCode, partyId)
    const key = `ses.${ownerKey(countryCode, partyId)}.${keyToken(sessionId)}`
    if (request.method === 'GET') {
      const stored = owned ? await this.context.objects.get<StoredSession>(key) : undefined
      return stored ? ok(stored.session) : fail(404, 2000, 'unknown session')
    }
    if (request.method !== 'PUT' && request.method !== 'PATCH')
      return fail(405, 2000, `sessions: ${request.method} is not allowed`)
    if (!owned) return fail(404, 2000, `${countryCode}/${partyId} is not one of your parties`)
    const now = Date.now()
    const stamp = formatDateTime(now - (now % 1000))
    if (request.method === 'PUT') {
      const parsed = lenient.session.safeParse(request.body)
      if (!parsed.success) return this.invalid(`invalid Session: ${describeIssues(parsed.error)}`)
      const session = parsed.data
      if (
        !this.same(session.country_code, countryCode) ||
        !this.same(session.party_id, partyId) ||
        session.id !== sessionId
      )
        return this.invalid('country_code, party_id and id of the Session must be those of the URL')
      const created = await this.storeSession(caller.partner, {
        ...session,
        last_updated: session.last_updated ?? stamp,
      })
      return ok(undefined, { http: created ? 201 : 200 })
    }
    const parsed = lenient.sessionPatch.safeParse(request.body)
    if (!parsed.success) return this.invalid(`invalid Session PATCH: ${describeIssues(parsed.error)}`)
    const patch = parsed.data
    const current = await this.context.objects.get<StoredSession>(key)
    if (!current) return fail(404, 2000, 'unknown session: PUT it first')
    const periods = patch.charging_periods ?? []
    const merged: ReceivedSession = {
      ...current.session,
      ...patch,
      charging_periods:
        periods.length > 0
          ? [...(current.session.charging_periods ?? []), ...periods]
          : current.session.charging_periods,
    } as ReceivedSession
    await this.storeSession(caller.partner, merged)
    return ok()
  }

  /** Store a session and publish what it tells. Returns true when it is new. */
  private async storeSession(partner: string, session: ReceivedSession): Promise<boolean> {
    const { objects, dataPlane } = this.context
    const key = `ses.${ownerKey(session.country_code, session.party_id)}.${keyToken(session.id)}`
    const rid = await this.evseRidOf(
      session.country_code,
      session.party_id,
      session.location_id,
      session.evse_uid,
    )
    let previous: StoredSession | undefined
    const stored = (await objects.update<StoredSession>(key, (current) => {
      previous = current
      return { ...(current ?? {}), partner, session }
    }))!
    this.metric.received.inc()
    if (!previous) this.counts.sessions += 1
    if (!rid) return previous === undefined
    const ended =
      session.status === 'COMPLETED' || session.status === 'INVALID' || session.end_date_time !== undefined
    const events: [string, Record<string, unknown>][] = []
    if (!stored.started && !ended) {
      events.push([
        'session_started',
        withoutUndefined({
          session: session.id,
          source: 'ocpi',
          partner,
          token: session.cdr_token.uid,
          contract_id: session.cdr_token.contract_id,
          auth_method: session.auth_method,
          connector: session.connector_id,
          status: session.status,
          t: parseDateTime(session.start_date_time) ?? Date.now(),
        }),
      ])
      stored.started = true
      await objects.put(`active.${rid}`, { key, session: session.id, partner })
    }
    if (ended && !stored.ended) {
      events.push([
        'session_ended',
        withoutUndefined({
          session: session.id,
          source: 'ocpi',
          partner,
          kwh: session.kwh,
          status: session.status,
          cost: session.total_cost?.excl_vat,
          currency: session.currency,
          t: parseDateTime(session.end_date_time ?? session.last_updated ?? '') ?? Date.now(),
        }),
      ])
      stored.ended = true
      const active = await objects.get<{ key: string }>(`active.${rid}`)
      if (active?.key === key) await objects.delete(`active.${rid}`)
    }
    const after = stored.periodsUpTo ?? -1
    const fresh = (session.charging_periods ?? []).filter(
      (period) => (parseDateTime(period.start_date_time) ?? 0) > after,
    )
    const records = sessionTelemetry({ ...session, charging_periods: fresh }, { rid })
    if (fresh.length > 0)
      stored.periodsUpTo = Math.max(
        after,
        ...fresh.map((period) => parseDateTime(period.start_date_time) ?? 0),
      )
    if (records.length > 0) await dataPlane.publishTelemetry(records)
    for (const [type, event] of events) await dataPlane.publishEvent('evse', rid, type, event)
    await objects.put(key, stored)
    return previous === undefined
  }

  /** The `evse` rid of a partner's EVSE, if the location is known. */
  private async evseRidOf(
    countryCode: string,
    partyId: string,
    locationId: string,
    evseUid: string,
  ): Promise<string | undefined> {
    const stored = await this.context.objects.get<StoredLocation>(
      `loc.${ownerKey(countryCode, partyId)}.${keyToken(locationId)}`,
    )
    const number = stored?.numbers[evseUid]
    return number === undefined ? undefined : `${stationRidFor(countryCode, partyId, locationId)}-${number}`
  }

  // ---- CDRs ----------------------------------------------------------------------------------------

  private async onCdrs(request: OcpiRequest): Promise<OcpiReply> {
    const caller = request.caller!
    if (request.method === 'GET') {
      const [countryCode, partyId, cdrId, ...rest] = request.segments
      if (!countryCode || !partyId || !cdrId || rest.length > 0)
        return fail(404, 2000, 'cdrs: GET the URL a POST answered')
      const stored = this.context.owns(caller, countryCode, partyId)
        ? await this.context.objects.get<{ cdr: ReceivedCdr }>(
            `cdr.${ownerKey(countryCode, partyId)}.${keyToken(cdrId)}`,
          )
        : undefined
      return stored ? ok(stored.cdr) : fail(404, 2000, 'unknown CDR')
    }
    if (request.method !== 'POST') return fail(405, 2000, 'cdrs: CDRs are POSTed, never replaced or changed')
    // Tolerant: the collection URL, or one with the CDR's id (with or without the owner).
    if (request.segments.length > 3) return fail(404, 2000, 'cdrs: POST to the collection URL')
    const parsed = lenient.cdr.safeParse(request.body)
    if (!parsed.success) return this.invalid(`invalid CDR: ${describeIssues(parsed.error)}`)
    const cdr = parsed.data
    const urlId = request.segments.at(-1)
    if (urlId !== undefined && urlId !== cdr.id) return this.invalid('the id in the URL is not the CDR id')
    if (!this.context.owns(caller, cdr.country_code, cdr.party_id))
      return fail(404, 2000, `${cdr.country_code}/${cdr.party_id} is not one of your parties`)
    const outcome = await this.storeCdr(caller.partner, cdr)
    if (outcome === 'conflict')
      return this.invalid(`CDR '${cdr.id}' exists with other content: send a credit CDR`)
    const location = this.context.publicUrl(
      `${BASE}/cdrs/${[cdr.country_code, cdr.party_id, cdr.id].map(encodeURIComponent).join('/')}`,
    )
    return ok(undefined, { http: outcome === 'created' ? 201 : 200, headers: { location } })
  }

  private async storeCdr(partner: string, cdr: ReceivedCdr): Promise<'created' | 'same' | 'conflict'> {
    const key = `cdr.${ownerKey(cdr.country_code, cdr.party_id)}.${keyToken(cdr.id)}`
    const now = Date.now()
    const copy = { ...cdr, last_updated: cdr.last_updated ?? formatDateTime(now - (now % 1000)) }
    let outcome: 'created' | 'same' | 'conflict' = 'created'
    // The event first, then the stored CDR: a crash in between repeats the event when the CPO
    // posts the CDR again (at least once), never loses it.
    await this.context.objects.update<{ cdr: ReceivedCdr; partner: string }>(key, async (current) => {
      if (current) {
        outcome = JSON.stringify(current.cdr) === JSON.stringify(copy) ? 'same' : 'conflict'
        return current
      }
      const location = cdr.cdr_location
      const rid = await this.evseRidOf(cdr.country_code, cdr.party_id, location.id, location.evse_uid)
      const target: { kind: ResourceKind; rid: string } = rid
        ? { kind: 'evse', rid }
        : { kind: 'station', rid: stationRidFor(cdr.country_code, cdr.party_id, location.id) }
      await this.context.dataPlane.publishEvent(
        target.kind,
        target.rid,
        'cdr',
        withoutUndefined({
          cdr: cdr.id,
          session: cdr.session_id,
          source: 'ocpi',
          partner,
          kwh: cdr.total_energy,
          hours: cdr.total_time,
          cost: cdr.total_cost.excl_vat,
          cost_incl_vat: cdr.total_cost.incl_vat,
          currency: cdr.currency,
          token: cdr.cdr_token.uid,
          start: parseDateTime(cdr.start_date_time),
          t: parseDateTime(cdr.end_date_time) ?? now,
        }),
      )
      return { cdr: copy, partner }
    })
    if (outcome !== 'created') return outcome
    this.counts.cdrs += 1
    this.metric.received.inc()
    return 'created'
  }

  // ---- tariffs ---------------------------------------------------------------------------------------

  private async onTariffs(request: OcpiRequest): Promise<OcpiReply> {
    const [countryCode, partyId, tariffId, ...rest] = request.segments
    if (!countryCode || !partyId || !tariffId || rest.length > 0)
      return fail(404, 2000, 'tariffs: /{country_code}/{party_id}/{tariff_id}')
    const caller = request.caller!
    const owned = this.context.owns(caller, countryCode, partyId)
    const key = `tar.${ownerKey(countryCode, partyId)}.${keyToken(tariffId)}`
    if (request.method === 'GET') {
      const stored = owned ? await this.context.objects.get<{ tariff: ReceivedTariff }>(key) : undefined
      return stored ? ok(stored.tariff) : fail(404, 2000, 'unknown tariff')
    }
    if (!owned) return fail(404, 2000, `${countryCode}/${partyId} is not one of your parties`)
    if (request.method === 'DELETE') {
      const existing = await this.context.objects.get(key)
      if (!existing) return fail(404, 2000, 'unknown tariff')
      await this.context.objects.delete(key)
      return ok()
    }
    if (request.method !== 'PUT') return fail(405, 2000, `tariffs: ${request.method} is not allowed`)
    const parsed = lenient.tariff.safeParse(request.body)
    if (!parsed.success) return this.invalid(`invalid Tariff: ${describeIssues(parsed.error)}`)
    const tariff = parsed.data
    if (
      !this.same(tariff.country_code, countryCode) ||
      !this.same(tariff.party_id, partyId) ||
      tariff.id !== tariffId
    )
      return this.invalid('country_code, party_id and id of the Tariff must be those of the URL')
    const created = await this.storeTariff(caller.partner, tariff)
    return ok(undefined, { http: created ? 201 : 200 })
  }

  private async storeTariff(partner: string, tariff: ReceivedTariff): Promise<boolean> {
    const key = `tar.${ownerKey(tariff.country_code, tariff.party_id)}.${keyToken(tariff.id)}`
    const now = Date.now()
    let created = false
    await this.context.objects.update(key, (current) => {
      created = current === undefined
      return {
        partner,
        tariff: { ...tariff, last_updated: tariff.last_updated ?? formatDateTime(now - (now % 1000)) },
      }
    })
    if (created) this.counts.tariffs += 1
    this.metric.received.inc()
    return created
  }

  // ---- pulls ----------------------------------------------------------------------------------------

  private pullInBackground(partner: Partner): void {
    if (this.pulling.has(partner.id)) return
    void this.pull(partner, [...PULL_MODULES]).catch((error: Error) =>
      this.context.logger.warn({ partner: partner.id, err: error.message }, 'ocpi pull failed'),
    )
  }

  private async pullAll(): Promise<void> {
    for (const partner of await this.context.registered(['CPO'])) this.pullInBackground(partner)
  }

  /** Pull modules from a CPO; one pull per partner at a time. */
  async pull(partner: Partner, modules: readonly PullModule[]): Promise<Record<string, unknown>> {
    const running = this.pulling.get(partner.id)
    if (running) await running.catch(() => {})
    const work = (async () => {
      const results: Record<string, unknown> = {}
      for (const module of modules) {
        try {
          results[module] = await this.pullModule(partner, module)
        } catch (error) {
          results[module] = { complete: false, error: (error as Error).message }
        }
      }
      return results
    })()
    this.pulling.set(partner.id, work)
    try {
      return await work
    } finally {
      if (this.pulling.get(partner.id) === work) this.pulling.delete(partner.id)
    }
  }

  private async pullModule(partner: Partner, module: PullModule): Promise<Record<string, unknown>> {
    const { objects, config, logger } = this.context
    const endpoint = this.context.endpoint(partner, module, 'SENDER')
    if (!endpoint) return { complete: true, received: 0, skipped: 'no sender endpoint' }
    const key = `pull.${partner.id}.${module}`
    const saved = await objects.get<PullProgress>(key)
    let progress: PullProgress
    let resumed = false
    if (saved && saved.completedAt === undefined && saved.next) {
      progress = saved
      resumed = true
    } else {
      const url = new URL(endpoint)
      url.searchParams.set('limit', String(config.page_limit))
      // Incremental: from when the last complete pull began (an hour of overlap for clocks).
      if (saved?.since !== undefined)
        url.searchParams.set(
          'date_from',
          formatDateTime(saved.since - 3_600_000 - ((saved.since - 3_600_000) % 1000)),
        )
      progress = {
        partner: partner.id,
        module,
        next: url.toString(),
        startedAt: Date.now(),
        received: 0,
        ...(saved?.since !== undefined ? { since: saved.since } : {}),
      }
      await objects.put(key, progress)
    }
    logger.info({ partner: partner.id, module, resumed, from: progress.next }, 'ocpi pull')
    const to = this.context.partyOf(partner, 'CPO')
    let invalid = 0
    for await (const page of this.context.pages(partner, progress.next, to)) {
      let accepted = 0
      await eachLimited(page.items, 16, async (item) => {
        if (await this.storePulled(partner, module, item)) accepted += 1
        else invalid += 1
      })
      progress = {
        ...progress,
        received: progress.received + accepted,
        ...(page.total !== undefined ? { total: page.total } : {}),
        next: page.next ?? '',
      }
      // After the page is stored: a pull cut here resumes with the next page.
      await objects.put(key, progress)
    }
    const done: PullProgress = { ...progress, next: '', completedAt: Date.now(), since: progress.startedAt }
    await objects.put(key, done)
    return { complete: true, resumed, received: progress.received, invalid, total: progress.total ?? null }
  }

  /** Store one pulled object (the partner's own only). False when it was refused. */
  private async storePulled(partner: Partner, module: PullModule, item: unknown): Promise<boolean> {
    const schema = {
      locations: lenient.location,
      sessions: lenient.session,
      cdrs: lenient.cdr,
      tariffs: lenient.tariff,
    }[module]
    const parsed = schema.safeParse(item)
    const owns = (countryCode: string, partyId: string) =>
      partner.roles.some(
        (role) => this.same(role.country_code, countryCode) && this.same(role.party_id, partyId),
      )
    if (!parsed.success || !owns(parsed.data.country_code, parsed.data.party_id)) {
      this.metric.invalid.inc()
      this.context.logger.debug(
        {
          partner: partner.id,
          module,
          err: parsed.success ? 'not its own party' : describeIssues(parsed.error),
        },
        'ocpi pulled object refused',
      )
      return false
    }
    const now = Date.now()
    const stamp = formatDateTime(now - (now % 1000))
    switch (module) {
      case 'locations':
        await this.storeLocation(partner.id, parsed.data as ReceivedLocation, stamp)
        break
      case 'sessions': {
        const session = parsed.data as ReceivedSession
        await this.storeSession(partner.id, { ...session, last_updated: session.last_updated ?? stamp })
        break
      }
      case 'cdrs':
        await this.storeCdr(partner.id, parsed.data as ReceivedCdr)
        break
      case 'tariffs':
        await this.storeTariff(partner.id, parsed.data as ReceivedTariff)
        break
    }
    return true
  }

  // ---- commands and charging profiles --------------------------------------------------------------

  /** The OCPI identity of an EVSE learnt from a partner. */
  private async target(rid: string): Promise<Target | undefined> {
    const { dataPlane, partners } = this.context
    const evse = await dataPlane.getResource('evse', rid)
    if (evse?.attrs.source !== 'ocpi') return undefined
    const ocpi = evse.attrs.ocpi as { evse_uid?: string } | undefined
    const stationRid = evse.attrs.station
    if (typeof stationRid !== 'string' || !ocpi?.evse_uid) return undefined
    const station = await dataPlane.getResource('station', stationRid)
    const owner = station?.attrs.ocpi as
      | { country_code?: string; party_id?: string; location_id?: string }
      | undefined
    if (!owner?.country_code || !owner.party_id || !owner.location_id) return undefined
    const partner = await partners.get(String(evse.attrs.partner))
    if (partner?.state !== 'registered') return undefined
    const connectors = Array.isArray(evse.attrs.connectors)
      ? (evse.attrs.connectors as { id?: string }[]).map((connector) => String(connector.id))
      : []
    return {
      rid,
      partner,
      countryCode: owner.country_code,
      partyId: owner.party_id,
      locationId: owner.location_id,
      evseUid: ocpi.evse_uid,
      connectors,
    }
  }

  private async onControl(message: ControlMessage): Promise<void> {
    if (message.kind !== 'evse') return
    const target = await this.target(message.rid)
    // Not an EVSE learnt over OCPI: another plugin's.
    if (!target) return
    const given = message.payload.request
    const request = typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID()
    await this.command(target, message.command, message.payload, request)
  }

  /** Send a command or charging profile to the CPO; its answer becomes a control_result event. */
  private async command(
    target: Target,
    command: string,
    input: Record<string, unknown>,
    request: string,
  ): Promise<Record<string, unknown>> {
    const { partner } = target
    const to = this.context.partyOf(partner, 'CPO')
    const report = async (result: Record<string, unknown>) => {
      await this.context.dataPlane.publishEvent(
        'evse',
        target.rid,
        'control_result',
        withoutUndefined({
          command,
          request,
          stage: 'response',
          source: 'ocpi',
          partner: partner.id,
          ...result,
          t: Date.now(),
        }),
      )
      return result
    }
    try {
      if (command === 'limit_power') {
        const url = this.context.endpoint(partner, 'chargingprofiles', 'RECEIVER')
        if (!url)
          return report({
            ok: false,
            result: 'NOT_SUPPORTED',
            reason: 'the CPO has no chargingprofiles endpoint',
          })
        const active = await this.context.objects.get<{ session: string }>(`active.${target.rid}`)
        if (!active)
          return report({ ok: false, result: 'UNKNOWN_SESSION', reason: 'no active session on this EVSE' })
        const v = Number(input.v)
        const factor = input.u === 'kW' ? 1000 : 1
        if (!Number.isFinite(v) || v < 0)
          return report({ ok: false, result: 'REJECTED', reason: 'v must be a non-negative number' })
        const until = typeof input.until === 'number' ? input.until : undefined
        const body = strict.setChargingProfile.parse({
          charging_profile: profileFromLimit(v * factor, until, Date.now()),
          response_url: this.context.publicUrl(`${BASE}/chargingprofiles/${request}`),
        })
        await this.remember(request, {
          partner: partner.id,
          command,
          rid: target.rid,
          created: Date.now(),
          kind: 'profile',
        })
        const answer = await this.context.send(partner, 'PUT', joinUrl(url, active.session), {
          body,
          schema: lenient.chargingProfileResponse,
          ...(to ? { to } : {}),
        })
        return report({
          ok: answer.data.result === 'ACCEPTED',
          result: answer.data.result,
          timeout: answer.data.timeout,
          session: active.session,
        })
      }
      const type = COMMANDS[command]
      if (!type) return report({ ok: false, result: 'NOT_SUPPORTED', reason: `unknown command '${command}'` })
      const url = this.context.endpoint(partner, 'commands', 'RECEIVER')
      if (!url)
        return report({ ok: false, result: 'NOT_SUPPORTED', reason: 'the CPO has no commands endpoint' })
      const responseUrl = this.context.publicUrl(`${BASE}/commands/${type}/${request}`)
      const body = await this.commandBody(type, target, input, responseUrl)
      if (typeof body === 'string') return report({ ok: false, result: 'REJECTED', reason: body })
      await this.remember(request, {
        partner: partner.id,
        command,
        rid: target.rid,
        created: Date.now(),
        kind: 'command',
      })
      this.counts.commands += 1
      const answer = await this.context.send(partner, 'POST', joinUrl(url, type), {
        body,
        schema: lenient.commandResponse,
        ...(to ? { to } : {}),
      })
      return report({
        ok: answer.data.result === 'ACCEPTED',
        result: answer.data.result,
        timeout: answer.data.timeout,
      })
    } catch (error) {
      // Reported, not retried: a refused or failed request to the CPO is the command's outcome.
      await this.context.objects.delete(`cmd.${request}`).catch(() => {})
      return report({ ok: false, result: 'FAILED', reason: (error as Error).message.slice(0, 300) })
    }
  }

  private async commandBody(
    type: CommandType,
    target: Target,
    input: Record<string, unknown>,
    responseUrl: string,
  ): Promise<Record<string, unknown> | string> {
    const token = () => {
      const uid = input.token ?? input.idTag
      const found =
        this.tokens.find((candidate) => candidate.uid === uid) ??
        (uid === undefined ? this.tokens[0] : undefined)
      return found
    }
    const connector =
      typeof input.connector === 'string' || typeof input.connector === 'number'
        ? String(input.connector)
        : target.connectors[0]
    switch (type) {
      case 'START_SESSION': {
        const driver = token()
        if (!driver) return 'token: no driver token by that uid (config `tokens`)'
        return strict.startSession.parse(
          withoutUndefined({
            response_url: responseUrl,
            token: driver,
            location_id: target.locationId,
            evse_uid: target.evseUid,
            connector_id: connector,
          }),
        )
      }
      case 'STOP_SESSION': {
        const session =
          typeof input.session === 'string'
            ? input.session
            : (await this.context.objects.get<{ session: string }>(`active.${target.rid}`))?.session
        if (!session) return 'session: no active session on this EVSE'
        return strict.stopSession.parse({ response_url: responseUrl, session_id: session })
      }
      case 'UNLOCK_CONNECTOR':
        if (!connector) return 'connector: the EVSE has no connector'
        return strict.unlockConnector.parse({
          response_url: responseUrl,
          location_id: target.locationId,
          evse_uid: target.evseUid,
          connector_id: connector,
        })
      case 'RESERVE_NOW': {
        const driver = token()
        if (!driver) return 'token: no driver token by that uid (config `tokens`)'
        const expiry = typeof input.expiry === 'number' ? input.expiry : Date.now() + 15 * 60_000
        const reservation = input.reservation ?? String(Math.floor(Date.now() / 1000))
        return strict.reserveNow.parse({
          response_url: responseUrl,
          token: driver,
          expiry_date: formatDateTime(expiry - (expiry % 1000)),
          reservation_id: String(reservation),
          location_id: target.locationId,
          evse_uid: target.evseUid,
        })
      }
      case 'CANCEL_RESERVATION':
        if (input.reservation === undefined) return 'reservation: the reservation id is required'
        return strict.cancelReservation.parse({
          response_url: responseUrl,
          reservation_id: String(input.reservation),
        })
    }
  }

  private remember(request: string, pending: PendingCommand): Promise<void> {
    return this.context.objects.put(`cmd.${request}`, pending)
  }

  /** The CPO's asynchronous CommandResult at our response URL. */
  private async onCommandResult(request: OcpiRequest): Promise<OcpiReply> {
    if (request.method !== 'POST') return fail(405, 2000, 'commands: POST results only')
    const [type, id, ...rest] = request.segments
    if (
      !type ||
      !id ||
      rest.length > 0 ||
      !(COMMAND_TYPES as readonly string[]).includes(type) ||
      !REQUEST_ID.test(id)
    )
      return fail(404, 2000, 'unknown command response URL')
    const pending = await this.context.objects.get<PendingCommand>(`cmd.${id}`)
    if (!pending || pending.partner !== request.caller!.partner || pending.kind !== 'command')
      return fail(404, 2000, 'unknown command response URL')
    const parsed = lenient.commandResult.safeParse(request.body)
    if (!parsed.success) return this.invalid(`invalid CommandResult: ${describeIssues(parsed.error)}`)
    await this.context.dataPlane.publishEvent(
      'evse',
      pending.rid,
      'control_result',
      withoutUndefined({
        command: pending.command,
        request: id,
        stage: 'result',
        source: 'ocpi',
        partner: pending.partner,
        ok: parsed.data.result === 'ACCEPTED',
        result: parsed.data.result,
        message: parsed.data.message?.[0]?.text,
        t: Date.now(),
      }),
    )
    await this.context.objects.delete(`cmd.${id}`)
    return ok()
  }

  /** Charging-profile results at our response URL, and a CPO's update of the active profile. */
  private async onProfileResult(request: OcpiRequest): Promise<OcpiReply> {
    const [id, ...rest] = request.segments
    if (!id || rest.length > 0) return fail(404, 2000, 'chargingprofiles: /{id}')
    const caller = request.caller!
    if (request.method === 'PUT') {
      // The CPO tells the active profile of a session changed.
      const parsed = lenient.activeChargingProfile.safeParse(request.body)
      if (!parsed.success)
        return this.invalid(`invalid ActiveChargingProfile: ${describeIssues(parsed.error)}`)
      const session = await this.findSession(caller.partner, id)
      if (!session) return fail(404, 2000, 'unknown session')
      const rid = await this.evseRidOf(
        session.country_code,
        session.party_id,
        session.location_id,
        session.evse_uid,
      )
      const period = parsed.data.charging_profile.charging_profile_period?.[0]
      if (rid && period && parsed.data.charging_profile.charging_rate_unit === 'W') {
        await this.context.dataPlane.publishTelemetry([
          {
            kind: 'evse',
            rid,
            q: 'power_limit',
            v: period.limit,
            t: Math.min(Date.now(), parseDateTime(parsed.data.start_date_time) ?? Date.now()),
          },
        ])
      }
      return ok()
    }
    if (request.method !== 'POST')
      return fail(405, 2000, `chargingprofiles: ${request.method} is not allowed`)
    if (!REQUEST_ID.test(id)) return fail(404, 2000, 'unknown charging profile response URL')
    const pending = await this.context.objects.get<PendingCommand>(`cmd.${id}`)
    if (!pending || pending.partner !== caller.partner || pending.kind !== 'profile')
      return fail(404, 2000, 'unknown charging profile response URL')
    const parsed = lenient.activeChargingProfileResult.safeParse(request.body)
    if (!parsed.success) return this.invalid(`invalid ChargingProfileResult: ${describeIssues(parsed.error)}`)
    await this.context.dataPlane.publishEvent(
      'evse',
      pending.rid,
      'control_result',
      withoutUndefined({
        command: pending.command,
        request: id,
        stage: 'result',
        source: 'ocpi',
        partner: pending.partner,
        ok: parsed.data.result === 'ACCEPTED',
        result: parsed.data.result,
        t: Date.now(),
      }),
    )
    await this.context.objects.delete(`cmd.${id}`)
    return ok()
  }

  private async findSession(partner: string, sessionId: string): Promise<ReceivedSession | undefined> {
    const owner = (await this.context.partners.get(partner))?.roles ?? []
    for (const role of owner) {
      const stored = await this.context.objects.get<StoredSession>(
        `ses.${ownerKey(role.country_code, role.party_id)}.${keyToken(sessionId)}`,
      )
      if (stored) return stored.session
    }
    return undefined
  }

  /** Commands whose result never came are forgotten after a day. */
  private async sweepCommands(): Promise<void> {
    const cutoff = Date.now() - 86_400_000
    for (const { key, value } of await this.context.objects.values<PendingCommand>('cmd.*')) {
      if (value.created < cutoff) await this.context.objects.delete(key)
    }
  }
}

interface Target {
  rid: string
  partner: Partner
  countryCode: string
  partyId: string
  locationId: string
  evseUid: string
  connectors: string[]
}

/** A module URL with path segments (each encoded). */
export function joinUrl(base: string, ...segments: string[]): string {
  return `${base.replace(/\/+$/, '')}/${segments.map(encodeURIComponent).join('/')}`
}

function upsertEvse(location: ReceivedLocation, evse: ReceivedEvse): void {
  const evses = location.evses ?? []
  const index = evses.findIndex((candidate) => candidate.uid === evse.uid)
  if (index >= 0) evses[index] = evse
  else evses.push(evse)
  location.evses = evses
}

/**
 * The glue of the OCPI plugin: the server's routes for the versions and credentials modules,
 * registration both ways (we receive a partner's POST/PUT/DELETE on credentials, or we start
 * the exchange with a token A they gave us), partners in KV, and the two roles (cpo.ts,
 * emsp.ts) that serve and call the functional modules through one RoleContext. Operator
 * actions (`oe-node ocpi …`) land here.
 */
import type { Logger } from '../../data-plane/index.ts'
import type { PluginDataPlane, PluginMetrics, PluginStore } from '../api.ts'
import { type OcpiAnswer, OcpiClient, type Party, type TokenEncoding } from './client.ts'
import { type OcpiConfig, versionsUrl } from './config.ts'
import { CpoRole } from './cpo.ts'
import { EmspRole } from './emsp.ts'
import {
  OcpiActionInputError,
  OcpiError,
  OcpiRegistrationError,
  OcpiRequestError,
  UnknownPartnerError,
} from './errors.ts'
import { type Caller, fail, type OcpiReply, type OcpiRequest, OcpiServer, ok, type Route } from './server.ts'
import { JsonStore, newToken, type Partner, PartnerState, sha256 } from './state.ts'
import {
  type Credentials,
  type CredentialsRole,
  describeIssues,
  type Endpoint,
  type InterfaceRole,
  type ModuleId,
  OCPI_VERSION,
  ocpi221,
  type Role,
} from './v221.ts'

export interface OcpiNodeInit {
  config: OcpiConfig
  host: string
  port: number
}

export interface OcpiNodeComponents {
  dataPlane: PluginDataPlane
  logger: Logger
  metrics: PluginMetrics
  /** The plugin's KV buckets. */
  stores: { partners: PluginStore; objects: PluginStore }
}

/** What the roles get from the glue. */
export interface RoleContext {
  readonly config: OcpiConfig
  readonly logger: Logger
  readonly dataPlane: PluginDataPlane
  readonly metrics: PluginMetrics
  readonly objects: JsonStore
  readonly partners: PartnerState
  readonly party: Party
  readonly signal: AbortSignal
  /** Our public URL of a local path under `/ocpi/`. */
  publicUrl(localPath: string): string
  /** Registered partners having one of these roles (all registered partners without). */
  registered(roles?: readonly Role[]): Promise<Partner[]>
  /** The registered partner that owns a party (country code, party id). */
  partnerOfParty(countryCode: string, partyId: string): Promise<Partner | undefined>
  /** A partner's endpoint for a module and interface role. */
  endpoint(partner: Partner, module: ModuleId, role: InterfaceRole): string | undefined
  /** The partner's party to address (OCPI-to-*) for one of its roles. */
  partyOf(partner: Partner, role: Role): Party | undefined
  /** A request to a partner with its token; counts as contact. */
  send<T = unknown>(
    partner: Partner,
    method: string,
    url: string,
    options?: { body?: unknown; schema?: import('zod').ZodType<T>; to?: Party },
  ): Promise<OcpiAnswer<T>>
  /** Pages of a partner's paginated list. */
  pages(
    partner: Partner,
    url: string,
    to?: Party,
  ): AsyncGenerator<{ url: string; items: unknown[]; next: string | undefined; total: number | undefined }>
  /** Is this party (from a URL or an object) one of the caller's? */
  owns(caller: Caller | undefined, countryCode: string, partyId: string): boolean
}

/** Interface a role implements. */
export interface OcpiRole {
  readonly name: 'CPO' | 'EMSP'
  routes(): Route[]
  /** Our endpoints for the version details. */
  endpoints(): { identifier: ModuleId; role: InterfaceRole; path: string }[]
  start(options: { signal?: AbortSignal }): Promise<void>
  stop(): Promise<void>
  /** A partner completed registration (either way). */
  onRegistered(partner: Partner): Promise<void>
  status(): Record<string, unknown>
  actions(): Record<string, (input: Record<string, unknown>) => Promise<unknown>>
}

const PARTNER_ID = /^[a-z0-9][a-z0-9-]{0,31}$/

/** A partner id from a name or host: `[a-z0-9-]`, at most 32. */
export function partnerIdFor(name: string): string {
  const id = name
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 32)
    .replace(/-+$/, '')
  return id === '' ? 'partner' : id
}

const sameParty = (a: string, b: string) => a.toUpperCase() === b.toUpperCase()

export class OcpiNode {
  private readonly server: OcpiServer
  private readonly client: OcpiClient
  private readonly partners: PartnerState
  private readonly objects: JsonStore
  private readonly roles: OcpiRole[] = []
  private readonly contacts = new Map<string, number>()
  private readonly authCache = new Map<string, { caller: Caller | undefined; until: number }>()
  private readonly abort = new AbortController()
  private flushTimer: ReturnType<typeof setInterval> | undefined
  private started = false
  private listening = false
  private readonly party: Party
  private readonly metric: {
    requests: { inc(value?: number): void }
    refused: { inc(value?: number): void }
    calls: { inc(value?: number): void }
    callFailures: { inc(value?: number): void }
    partners: { set(value: number): void }
  }

  constructor(
    private readonly init: OcpiNodeInit,
    private readonly components: OcpiNodeComponents,
  ) {
    const { config } = init
    this.party = { country_code: config.country_code, party_id: config.party_id }
    this.partners = new PartnerState(new JsonStore(components.stores.partners))
    this.objects = new JsonStore(components.stores.objects)
    this.client = new OcpiClient({
      timeoutMs: config.call_timeout * 1000,
      party: this.party,
      maxResponseBytes: 256 * 1024 * 1024,
    })
    const { metrics } = components
    this.metric = {
      requests: metrics.counter('requests_total', 'OCPI requests answered'),
      refused: metrics.counter(
        'requests_refused_total',
        'OCPI requests refused (authentication, size, format, errors)',
      ),
      calls: metrics.counter('calls_total', 'OCPI requests sent to partners'),
      callFailures: metrics.counter('call_failures_total', 'OCPI requests to partners that failed'),
      partners: metrics.gauge('partners_registered', 'OCPI partners registered'),
    }
    this.server = new OcpiServer(
      { host: init.host, port: init.port, maxBodyBytes: config.max_body_bytes, party: this.party },
      {
        logger: components.logger,
        authenticate: (token) => this.authenticate(token),
        onRequest: (outcome) => (outcome === 'ok' ? this.metric.requests.inc() : this.metric.refused.inc()),
      },
    )
    const context = this.context()
    if (config.roles.includes('cpo')) this.roles.push(new CpoRole(context))
    if (config.roles.includes('emsp')) this.roles.push(new EmspRole(context))
  }

  get versionsUrl(): string {
    return versionsUrl(this.init.config, this.server.address)
  }

  /** `https://host/ocpi` (the versions URL without `/versions`). */
  private get baseUrl(): string {
    return this.versionsUrl.replace(/\/versions\/?$/, '')
  }

  private publicUrl(localPath: string): string {
    return `${this.baseUrl}${localPath.replace(/^\/ocpi/, '')}`
  }

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.started) return
    this.started = true
    try {
      this.server.mount(this.routes())
      for (const role of this.roles) this.server.mount(role.routes())
      await this.server.start(options)
      this.listening = true
      for (const role of this.roles) await role.start(options)
    } catch (error) {
      await this.stop()
      throw error
    }
    this.flushTimer = setInterval(() => void this.flushContacts(), 30_000)
    this.flushTimer.unref?.()
    const registered = await this.partners.list()
    this.metric.partners.set(registered.filter((partner) => partner.state === 'registered').length)
    this.components.logger.info(
      { versions: this.versionsUrl, roles: this.init.config.roles, partners: registered.length },
      'ocpi listening',
    )
  }

  async stop(): Promise<void> {
    if (!this.started) return
    this.started = false
    this.listening = false
    this.abort.abort()
    if (this.flushTimer) clearInterval(this.flushTimer)
    for (const role of [...this.roles].reverse()) await role.stop().catch(() => {})
    await this.server.stop()
    await this.flushContacts().catch(() => {})
  }

  ready(): boolean {
    return this.listening
  }

  status(): Record<string, unknown> {
    const address = this.server.address
    return {
      listen: address ? `${address.host}:${address.port}` : this.init.config.listen,
      versions_url: this.versionsUrl,
      party: `${this.party.country_code}/${this.party.party_id}`,
      roles: this.init.config.roles,
      ...Object.fromEntries(this.roles.map((role) => [role.name.toLowerCase(), role.status()])),
    }
  }

  // ---- the context the roles use ---------------------------------------------------------

  private context(): RoleContext {
    return {
      config: this.init.config,
      logger: this.components.logger,
      dataPlane: this.components.dataPlane,
      metrics: this.components.metrics,
      objects: this.objects,
      partners: this.partners,
      party: this.party,
      signal: this.abort.signal,
      publicUrl: (path) => this.publicUrl(path),
      registered: async (roles) =>
        (await this.partners.list()).filter(
          (partner) =>
            partner.state === 'registered' &&
            (roles === undefined || partner.roles.some((role) => roles.includes(role.role))),
        ),
      partnerOfParty: async (countryCode, partyId) =>
        (await this.partners.list()).find(
          (partner) =>
            partner.state === 'registered' &&
            partner.roles.some(
              (role) => sameParty(role.country_code, countryCode) && sameParty(role.party_id, partyId),
            ),
        ),
      endpoint: (partner, module, role) =>
        partner.endpoints.find((endpoint) => endpoint.identifier === module && endpoint.role === role)?.url,
      partyOf: (partner, role) => {
        const found = partner.roles.find((candidate) => candidate.role === role)
        return found ? { country_code: found.country_code, party_id: found.party_id } : undefined
      },
      send: (partner, method, url, options = {}) => this.send(partner, method, url, options),
      pages: (partner, url, to) => this.pages(partner, url, to),
      owns: (caller, countryCode, partyId) =>
        caller?.parties.some(
          (party) => sameParty(party.country_code, countryCode) && sameParty(party.party_id, partyId),
        ) ?? false,
    }
  }

  private async send<T>(
    partner: Partner,
    method: string,
    url: string,
    options: { body?: unknown; schema?: import('zod').ZodType<T>; to?: Party },
  ): Promise<OcpiAnswer<T>> {
    if (!partner.tokenToThem) throw new OcpiError(`partner '${partner.id}' has no token to call it with`)
    this.metric.calls.inc()
    try {
      const answer = await this.client.request<T>(method, url, {
        token: partner.tokenToThem,
        encoding: partner.encoding,
        ...(options.body === undefined ? {} : { body: options.body }),
        ...(options.schema ? { schema: options.schema } : {}),
        ...(options.to ? { to: options.to } : {}),
        signal: this.abort.signal,
      })
      this.contacts.set(partner.id, Date.now())
      return answer
    } catch (error) {
      this.metric.callFailures.inc()
      throw error
    }
  }

  private async *pages(partner: Partner, url: string, to?: Party) {
    if (!partner.tokenToThem) throw new OcpiError(`partner '${partner.id}' has no token to call it with`)
    for await (const page of this.client.pages(url, {
      token: partner.tokenToThem,
      encoding: partner.encoding,
      ...(to ? { to } : {}),
      signal: this.abort.signal,
    })) {
      this.metric.calls.inc()
      this.contacts.set(partner.id, Date.now())
      yield page
    }
  }

  private async flushContacts(): Promise<void> {
    const contacts = [...this.contacts]
    this.contacts.clear()
    for (const [id, at] of contacts) {
      await this.partners.update(id, (partner) =>
        partner ? { ...partner, lastContact: Math.max(partner.lastContact ?? 0, at) } : undefined,
      )
    }
  }

  private async authenticate(token: string): Promise<Caller | undefined> {
    const hash = sha256(token)
    const cached = this.authCache.get(hash)
    const now = Date.now()
    if (cached && cached.until > now) return cached.caller
    const entry = await this.partners.authenticate(token)
    const partner = entry ? await this.partners.get(entry.partner) : undefined
    const caller: Caller | undefined =
      entry && partner
        ? {
            partner: partner.id,
            token: entry.token,
            parties: partner.roles.map((role) => ({
              country_code: role.country_code,
              party_id: role.party_id,
            })),
          }
        : undefined
    if (caller) this.contacts.set(caller.partner, now)
    if (this.authCache.size > 10_000) this.authCache.clear()
    this.authCache.set(hash, { caller, until: now + 2_000 })
    return caller
  }

  private forgetAuth(): void {
    this.authCache.clear()
  }

  // ---- versions and credentials -------------------------------------------------------------

  private ourRoles(): CredentialsRole[] {
    const { config } = this.init
    const business = {
      name: config.business_name,
      ...(config.website ? { website: config.website } : {}),
    }
    return config.roles.map((role) => ({
      role: role === 'cpo' ? 'CPO' : 'EMSP',
      business_details: business,
      party_id: config.party_id,
      country_code: config.country_code,
    }))
  }

  /** Our credentials object with `token` for the partner to use: checked strictly before it leaves. */
  private ourCredentials(token: string): Credentials {
    return ocpi221.strict.credentials.parse({ token, url: this.versionsUrl, roles: this.ourRoles() })
  }

  private endpoints(): Endpoint[] {
    const endpoints: Endpoint[] = [
      { identifier: 'credentials', role: 'SENDER', url: this.publicUrl(`/ocpi/${OCPI_VERSION}/credentials`) },
    ]
    for (const role of this.roles) {
      for (const endpoint of role.endpoints()) {
        endpoints.push({
          identifier: endpoint.identifier,
          role: endpoint.role,
          url: this.publicUrl(endpoint.path),
        })
      }
    }
    return endpoints
  }

  private routes(): Route[] {
    return [
      {
        base: '/ocpi/versions',
        access: 'open',
        functional: false,
        handle: async (request) => {
          if (request.method !== 'GET') return fail(405, 2000, 'versions: GET only')
          if (request.segments.length > 0) return fail(404, 2000, 'no such version endpoint')
          return ok(
            ocpi221.strict.versions.parse([
              { version: OCPI_VERSION, url: this.publicUrl(`/ocpi/${OCPI_VERSION}`) },
            ]),
          )
        },
      },
      {
        base: `/ocpi/${OCPI_VERSION}`,
        access: 'open',
        functional: false,
        handle: async (request) => {
          if (request.segments.length > 0) return fail(404, 2000, 'no such endpoint')
          if (request.method !== 'GET') return fail(405, 2000, 'version details: GET only')
          return ok(
            ocpi221.strict.versionDetails.parse({ version: OCPI_VERSION, endpoints: this.endpoints() }),
          )
        },
      },
      {
        base: `/ocpi/${OCPI_VERSION}/credentials`,
        access: 'registration',
        functional: false,
        handle: (request) => this.onCredentials(request),
      },
    ]
  }

  private async onCredentials(request: OcpiRequest): Promise<OcpiReply> {
    if (request.segments.length > 0) return fail(404, 2000, 'no such endpoint')
    const caller = request.caller!
    const partner = await this.partners.get(caller.partner)
    if (!partner) return fail(401, 2000, 'unknown credentials token')
    const registered = partner.state === 'registered' && caller.token === 'partner'
    switch (request.method) {
      case 'GET': {
        // The token the caller presented is the one to access us with.
        const presented = presentedToken(request.headers.get('authorization'), caller)
        return ok(this.ourCredentials(presented ?? '#NA'))
      }
      case 'POST':
      case 'PUT': {
        if (request.method === 'POST' && registered)
          return fail(405, 2000, 'already registered: update with PUT or unregister with DELETE')
        if (request.method === 'PUT' && !registered)
          return fail(405, 2000, 'not registered yet: register with POST')
        const parsed = ocpi221.lenient.credentials.safeParse(request.body)
        if (!parsed.success) return fail(200, 2001, `invalid credentials: ${describeIssues(parsed.error)}`)
        try {
          const credentials = await this.acceptRegistration(partner, parsed.data)
          return ok(credentials)
        } catch (error) {
          if (error instanceof OcpiRegistrationError) return fail(200, error.ocpiStatus, error.message)
          throw error
        }
      }
      case 'DELETE': {
        if (!registered) return fail(405, 2000, 'not registered')
        await this.partners.remove(partner.id)
        this.forgetAuth()
        await this.countPartners()
        this.components.logger.info({ partner: partner.id }, 'ocpi partner unregistered itself')
        return ok()
      }
      default:
        return fail(405, 2000, `credentials: ${request.method} is not allowed`)
    }
  }

  /** A partner registers (POST) or updates (PUT): fetch its versions and endpoints, issue token C. */
  private async acceptRegistration(partner: Partner, credentials: Credentials): Promise<Credentials> {
    const discovered = await this.discover(credentials.url, credentials.token).catch((error: Error) => {
      if (error instanceof OcpiRegistrationError) throw error
      throw new OcpiRegistrationError(`cannot use your API at ${credentials.url}: ${error.message}`, 3001, {
        cause: error,
      })
    })
    this.checkComplement(credentials.roles)
    const tokenC = newToken()
    await this.partners.revokeTokens(partner.id)
    await this.partners.grantToken(partner.id, tokenC, 'partner')
    this.forgetAuth()
    const updated: Partner = {
      ...partner,
      state: 'registered',
      initiator: 'partner',
      roles: credentials.roles,
      versionsUrl: credentials.url,
      version: OCPI_VERSION,
      endpoints: discovered.endpoints,
      tokenToThem: credentials.token,
      encoding: discovered.encoding,
      registeredAt: Date.now(),
      lastContact: Date.now(),
    }
    delete updated.lastError
    await this.partners.put(updated)
    this.forgetAuth()
    await this.countPartners()
    this.components.logger.info(
      {
        partner: partner.id,
        roles: credentials.roles.map((role) => `${role.role} ${role.country_code}/${role.party_id}`),
      },
      'ocpi partner registered',
    )
    this.afterRegistration(updated)
    return this.ourCredentials(tokenC)
  }

  /** Our roles and theirs must meet (CPO with eMSP), else 3003. */
  private checkComplement(roles: readonly CredentialsRole[]): void {
    const theirs = new Set(roles.map((role) => role.role))
    const ours = this.init.config.roles
    const meets =
      (ours.includes('cpo') &&
        (theirs.has('EMSP') || theirs.has('NSP') || theirs.has('OTHER') || theirs.has('SCSP'))) ||
      (ours.includes('emsp') && theirs.has('CPO'))
    if (!meets)
      throw new OcpiRegistrationError(
        `no role of yours (${[...theirs].join(', ')}) works with ours (${ours.join(', ').toUpperCase()})`,
        3003,
      )
  }

  /** GET a versions URL and the 2.2.1 details with a token. */
  private async discover(
    url: string,
    token: string,
  ): Promise<{ endpoints: Endpoint[]; encoding: TokenEncoding; detailsUrl: string }> {
    const versions = await this.client.request('GET', url, {
      token,
      encoding: 'auto',
      schema: ocpi221.lenient.versions,
      signal: this.abort.signal,
    })
    const version = versions.data.find((candidate) => candidate.version === OCPI_VERSION)
    if (!version)
      throw new OcpiRegistrationError(
        `no common OCPI version (${versions.data.map((candidate) => candidate.version).join(', ')}; we speak ${OCPI_VERSION})`,
        3002,
      )
    const details = await this.client.request('GET', version.url, {
      token,
      encoding: versions.encoding,
      schema: ocpi221.lenient.versionDetails,
      signal: this.abort.signal,
    })
    const endpoints = details.data.endpoints.filter((endpoint): endpoint is Endpoint =>
      (ocpi221.strict.endpoint.shape.identifier.options as readonly string[]).includes(endpoint.identifier),
    )
    if (!endpoints.some((endpoint) => endpoint.identifier === 'credentials'))
      throw new OcpiRegistrationError(`${version.url} lists no credentials endpoint`, 3003)
    return { endpoints, encoding: versions.encoding, detailsUrl: version.url }
  }

  private afterRegistration(partner: Partner): void {
    // After the answer is on its way: the partner stores our token and roles first (a push that
    // arrives before would find it still waiting for our answer).
    setTimeout(() => {
      for (const role of this.roles) {
        role
          .onRegistered(partner)
          .catch((error: Error) =>
            this.components.logger.warn(
              { partner: partner.id, role: role.name, err: error.message },
              'ocpi after-registration work failed',
            ),
          )
      }
    }, 1_000).unref?.()
  }

  private async countPartners(): Promise<void> {
    const partners = await this.partners.list()
    this.metric.partners.set(partners.filter((partner) => partner.state === 'registered').length)
  }

  // ---- operator actions ------------------------------------------------------------------------

  /** Issue a registration token A for a partner to register with us. */
  async createToken(name: string): Promise<Record<string, unknown>> {
    const id = partnerIdFor(name)
    const existing = await this.partners.get(id)
    if (existing?.state === 'registered')
      throw new OcpiActionInputError(
        `partner '${id}' is registered: unregister it first, or let it update with PUT`,
      )
    const token = newToken()
    await this.partners.revokeTokens(id, 'registration')
    await this.partners.put({
      id,
      name,
      state: 'invited',
      createdAt: existing?.createdAt ?? Date.now(),
      roles: [],
      endpoints: [],
      encoding: 'base64',
    })
    await this.partners.grantToken(id, token, 'registration')
    this.forgetAuth()
    return { partner: id, token, versions_url: this.versionsUrl }
  }

  /** Register with a partner's platform, given its versions URL and a token A it issued. */
  async register(url: string, tokenA: string, name: string | undefined): Promise<Record<string, unknown>> {
    let parsedUrl: URL
    try {
      parsedUrl = new URL(url)
    } catch {
      throw new OcpiActionInputError(`'${url}' is not a URL`)
    }
    const id = partnerIdFor(
      name ?? `${parsedUrl.hostname}-${parsedUrl.port || parsedUrl.protocol.replace(':', '')}`,
    )
    const existing = await this.partners.get(id)
    if (existing?.state === 'registered')
      throw new OcpiActionInputError(`partner '${id}' is already registered (unregister it first)`)
    const discovered = await this.discover(url, tokenA)
    const credentialsUrl = discovered.endpoints.find((endpoint) => endpoint.identifier === 'credentials')!.url
    const tokenB = newToken()
    await this.partners.put({
      id,
      name: name ?? id,
      state: 'invited',
      createdAt: existing?.createdAt ?? Date.now(),
      roles: [],
      endpoints: discovered.endpoints,
      encoding: discovered.encoding,
      versionsUrl: url,
    })
    await this.partners.revokeTokens(id)
    await this.partners.grantToken(id, tokenB, 'partner')
    this.forgetAuth()
    try {
      const answer = await this.client.request('POST', credentialsUrl, {
        token: tokenA,
        encoding: discovered.encoding,
        body: this.ourCredentials(tokenB),
        schema: ocpi221.lenient.credentials,
        signal: this.abort.signal,
      })
      const credentials = answer.data
      this.checkComplement(credentials.roles)
      let { endpoints, encoding } = discovered
      if (credentials.url !== url) {
        const again = await this.discover(credentials.url, credentials.token)
        endpoints = again.endpoints
        encoding = again.encoding
      }
      const partner: Partner = {
        id,
        name: name ?? id,
        state: 'registered',
        initiator: 'us',
        createdAt: existing?.createdAt ?? Date.now(),
        roles: credentials.roles,
        versionsUrl: credentials.url,
        version: OCPI_VERSION,
        endpoints,
        tokenToThem: credentials.token,
        encoding,
        registeredAt: Date.now(),
        lastContact: Date.now(),
      }
      await this.partners.put(partner)
      this.forgetAuth()
      await this.countPartners()
      this.components.logger.info({ partner: id }, 'ocpi registered with partner')
      this.afterRegistration(partner)
      return this.describe(partner)
    } catch (error) {
      await this.partners.remove(id)
      this.forgetAuth()
      if (error instanceof OcpiRequestError || error instanceof OcpiRegistrationError) throw error
      throw new OcpiError(`registration with ${url} failed: ${(error as Error).message}`, { cause: error })
    }
  }

  /** Renew the credentials both ways (PUT credentials): new token B for them, new C from them. */
  async update(id: string): Promise<Record<string, unknown>> {
    const partner = await this.registeredPartner(id)
    const credentialsUrl = partner.endpoints.find((endpoint) => endpoint.identifier === 'credentials')?.url
    if (!credentialsUrl) throw new OcpiError(`partner '${id}' lists no credentials endpoint`)
    const tokenB = newToken()
    await this.partners.grantToken(id, tokenB, 'partner')
    const answer = await this.send(partner, 'PUT', credentialsUrl, {
      body: this.ourCredentials(tokenB),
      schema: ocpi221.lenient.credentials,
    }).catch(async (error: Error) => {
      await this.partners.revokeHash(sha256(tokenB))
      throw error
    })
    await this.partners.revokeTokens(id, 'partner', sha256(tokenB))
    this.forgetAuth()
    const discovered = await this.discover(answer.data.url, answer.data.token)
    const updated: Partner = {
      ...partner,
      roles: answer.data.roles,
      versionsUrl: answer.data.url,
      endpoints: discovered.endpoints,
      encoding: discovered.encoding,
      tokenToThem: answer.data.token,
    }
    await this.partners.put(updated)
    this.forgetAuth()
    return this.describe(updated)
  }

  /** Unregister (DELETE credentials at the partner), and forget the partner here. */
  async unregister(id: string): Promise<Record<string, unknown>> {
    const partner = await this.partners.get(id)
    if (!partner) throw new UnknownPartnerError(id)
    let remote: string = 'not registered'
    const credentialsUrl = partner.endpoints.find((endpoint) => endpoint.identifier === 'credentials')?.url
    if (partner.state === 'registered' && credentialsUrl && partner.tokenToThem) {
      try {
        await this.send(partner, 'DELETE', credentialsUrl, {})
        remote = 'unregistered'
      } catch (error) {
        remote = `failed: ${(error as Error).message}`
      }
    }
    await this.partners.remove(id)
    this.forgetAuth()
    await this.countPartners()
    return { partner: id, remote }
  }

  private async registeredPartner(id: unknown): Promise<Partner> {
    if (typeof id !== 'string' || !PARTNER_ID.test(id))
      throw new OcpiActionInputError('partner (its id) is required')
    const partner = await this.partners.get(id)
    if (!partner) throw new UnknownPartnerError(id)
    if (partner.state !== 'registered') throw new OcpiActionInputError(`partner '${id}' is not registered`)
    return partner
  }

  private describe(partner: Partner): Record<string, unknown> {
    const contact = Math.max(partner.lastContact ?? 0, this.contacts.get(partner.id) ?? 0)
    return {
      id: partner.id,
      name: partner.name,
      state: partner.state,
      initiator: partner.initiator ?? null,
      version: partner.version ?? null,
      roles: partner.roles.map((role) => ({
        role: role.role,
        country_code: role.country_code,
        party_id: role.party_id,
        name: role.business_details.name,
      })),
      modules: partner.endpoints
        .filter((endpoint) => endpoint.identifier !== 'credentials')
        .map((endpoint) => `${endpoint.identifier}:${endpoint.role.toLowerCase()}`),
      versions_url: partner.versionsUrl ?? null,
      registered_at: partner.registeredAt ?? null,
      last_contact: contact > 0 ? contact : null,
    }
  }

  actions(): Record<string, (input: Record<string, unknown>) => Promise<unknown>> {
    const text = (value: unknown, name: string): string => {
      if (typeof value !== 'string' || value.trim() === '')
        throw new OcpiActionInputError(`${name} is required`)
      return value.trim()
    }
    const wrap =
      (action: (input: Record<string, unknown>) => Promise<unknown>) =>
      async (input: Record<string, unknown>): Promise<unknown> => {
        try {
          return await action(input ?? {})
        } catch (error) {
          if (error instanceof OcpiError) throw error
          throw new OcpiError((error as Error).message, { cause: error })
        }
      }
    const own: Record<string, (input: Record<string, unknown>) => Promise<unknown>> = {
      token_create: wrap((input) => this.createToken(text(input.name, 'name'))),
      register: wrap((input) =>
        this.register(
          text(input.url, 'url'),
          text(input.token, 'token'),
          typeof input.name === 'string' ? input.name : undefined,
        ),
      ),
      update: wrap((input) => this.update(text(input.partner, 'partner'))),
      unregister: wrap((input) => this.unregister(text(input.partner, 'partner'))),
      partners: wrap(async () => ({
        versions_url: this.versionsUrl,
        partners: (await this.partners.list()).map((partner) => this.describe(partner)),
      })),
    }
    for (const role of this.roles) {
      for (const [name, action] of Object.entries(role.actions())) own[name] = wrap(action)
    }
    return own
  }
}

/** The credentials token a request authenticated with (to echo in GET credentials). */
function presentedToken(header: string | null, _caller: Caller): string | undefined {
  const match = header ? /^Token\s+(\S+)\s*$/i.exec(header) : null
  if (!match) return undefined
  const raw = match[1]!
  const decoded = Buffer.from(raw, 'base64').toString('utf8')
  return /^[\x21-\x7e]{1,64}$/.test(decoded) && Buffer.from(decoded).toString('base64') === raw
    ? decoded
    : raw
}

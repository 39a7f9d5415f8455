/**
 * The VTN: ties the transport (server.ts), the version codecs, the visibility rules, the state
 * in KV and the node's data plane together. It answers every operation of both documents
 * (programs, events, reports, subscriptions, vens, resources, auth, notifiers), notifies
 * subscribers by webhook, turns VEN resources into standing data and reports into telemetry,
 * and turns `limit_power` commands into events for the VEN that owns the resource.
 */
import type { Logger, ResourceKind } from '../../data-plane/index.ts'
import type { ControlMessage, PluginDataPlane, PluginMetrics, PluginStore } from '../api.ts'
import { TokenIssuer } from './auth.ts'
import { dropUndefined, isObject, isoString } from './codec.ts'
import type { VtnConfig } from './config.ts'
import { contractFor, OPENADR_VERSIONS, type OpenAdrVersion } from './contract.ts'
import { VtnConflictError, VtnNameTakenError } from './errors.ts'
import {
  type Body,
  type Client,
  OBJECT_TYPES,
  type ObjectKind,
  type Operation,
  type Role,
  type StoredObject,
} from './model.ts'
import {
  BL_FILTERS,
  blTopics,
  brokerUri,
  MQTT_ROOT,
  mqttBinding,
  type OperationTopics,
  operationTopics,
  topicBase,
  venFilters,
  venTopic,
} from './mqtt.ts'
import { limitToEventBody, reportToTelemetry, resourceIdFor } from './normalise.ts'
import { CODECS, problem, type VtnRequest, type VtnResponse, VtnServer } from './server.ts'
import { fixedId, newId, type UniqueName, uniqueKey, VtnState } from './state.ts'
import { resolveEvent, valuesAt } from './timing.ts'
import { mayWrite, OWNED_KINDS, owns, targetView } from './visibility.ts'
import { WebhookSender } from './webhooks.ts'

export interface VtnInit {
  config: VtnConfig
  host: string
  port: number
}

export interface VtnComponents {
  dataPlane: PluginDataPlane
  logger: Logger
  metrics: PluginMetrics
  /** The plugin's KV store for objects, and one for tokens. */
  objects: PluginStore
  tokens: PluginStore
}

interface KindOperations {
  search: string
  create: string
  read: string
  update: string
  delete: string
  idParam: string
}

const OPERATIONS: Record<ObjectKind, KindOperations> = {
  program: {
    search: 'searchAllPrograms',
    create: 'createProgram',
    read: 'searchProgramByProgramId',
    update: 'updateProgram',
    delete: 'deleteProgram',
    idParam: 'programID',
  },
  event: {
    search: 'searchAllEvents',
    create: 'createEvent',
    read: 'searchEventsByID',
    update: 'updateEvent',
    delete: 'deleteEvent',
    idParam: 'eventID',
  },
  report: {
    search: 'searchAllReports',
    create: 'createReport',
    read: 'searchReportsByReportID',
    update: 'updateReport',
    delete: 'deleteReport',
    idParam: 'reportID',
  },
  subscription: {
    search: 'searchSubscriptions',
    create: 'createSubscription',
    read: 'searchSubscriptionByID',
    update: 'updateSubscription',
    delete: 'deleteSubscription',
    idParam: 'subscriptionID',
  },
  ven: {
    search: 'searchVens',
    create: 'createVen',
    read: 'searchVenByID',
    update: 'updateVen',
    delete: 'deleteVen',
    idParam: 'venID',
  },
  resource: {
    search: 'searchVenResources',
    create: 'createResource',
    read: 'searchVenResourceByID',
    update: 'updateVenResource',
    delete: 'deleteVenResource',
    idParam: 'resourceID',
  },
}

type Route = { kind: ObjectKind; action: keyof Omit<KindOperations, 'idParam'> }
const ROUTES = new Map<string, Route>()
for (const [kind, operations] of Object.entries(OPERATIONS) as [ObjectKind, KindOperations][]) {
  for (const action of ['search', 'create', 'read', 'update', 'delete'] as const)
    ROUTES.set(operations[action], { kind, action })
}

const DEFAULT_LIMIT = 50
/** VENs and events listed in the status (the counts cover all of them). */
const STATUS_LIMIT = 50

/** A report in a few fields: what, when, about which event, and its first value per type. */
function reportSummary(report: StoredObject): Record<string, unknown> {
  const values: Record<string, unknown> = {}
  for (const resource of (report.body.resources as Body[] | undefined) ?? []) {
    for (const interval of (resource.intervals as Body[] | undefined) ?? []) {
      for (const payload of (interval.payloads as Body[] | undefined) ?? []) {
        const type = payload.type as string
        if (values[type] === undefined && Array.isArray(payload.values)) values[type] = payload.values[0]
      }
    }
  }
  return {
    id: report.id,
    ...(typeof report.body.reportName === 'string' ? { name: report.body.reportName } : {}),
    eventID: report.body.eventID as string,
    at: Date.parse(report.modificationDateTime),
    values,
  }
}

/** The target the node's control events carry for a resource (granted on its resource object). */
export const controlTarget = (rid: string) => `oe:${rid}`

class Refusal extends Error {
  constructor(readonly response: VtnResponse) {
    super('refused')
  }
}

export class Vtn {
  readonly state: VtnState
  private readonly server: VtnServer
  private readonly tokens: TokenIssuer
  private readonly webhooks: WebhookSender
  private started = false
  private listening = false
  private pruneTimer: ReturnType<typeof setInterval> | undefined
  private controlProgramId: string | undefined
  /** Last authenticated request per client (epoch ms), for the operator's view. */
  private readonly lastSeen = new Map<string, number>()
  private readonly metric: {
    requests: { inc(value?: number): void }
    invalid: { inc(value?: number): void }
    records: { inc(value?: number): void }
    webhooksDelivered: { inc(value?: number): void }
    webhooksFailed: { inc(value?: number): void }
    mqttPublished: { inc(value?: number): void }
  }

  constructor(
    private readonly init: VtnInit,
    private readonly components: VtnComponents,
  ) {
    const { config } = init
    this.state = new VtnState({
      store: components.objects,
      logger: components.logger,
      retried: components.metrics.counter(
        'replica_retries_total',
        'VTN writes redone on the newest version: another replica wrote the same key first',
      ),
    })
    this.tokens = new TokenIssuer(
      { clients: config.clients, lifetimeS: config.token_lifetime },
      { store: components.tokens },
    )
    this.webhooks = new WebhookSender(
      { attempts: config.webhook_attempts, timeoutMs: config.webhook_timeout * 1000 },
      {
        logger: components.logger,
        onResult: (_delivery, outcome) =>
          outcome.delivered ? this.metric.webhooksDelivered.inc() : this.metric.webhooksFailed.inc(),
      },
    )
    this.server = new VtnServer(
      { host: init.host, port: init.port, maxBodyBytes: config.max_body_bytes },
      {
        logger: components.logger,
        authenticate: async (token) => {
          const grant = await this.tokens.verify(token)
          return grant ? { clientId: grant.clientId, role: grant.role as Role } : undefined
        },
        handle: (request) => this.handle(request),
        onResponse: () => this.metric.requests.inc(),
        onInvalidResponse: () => this.metric.invalid.inc(),
      },
    )
    const { metrics } = components
    this.metric = {
      requests: metrics.counter('requests_total', 'OpenADR requests answered'),
      invalid: metrics.counter(
        'responses_invalid_total',
        'OpenADR answers withheld because they did not fit the OpenAPI document',
      ),
      records: metrics.counter('records_published_total', 'telemetry records published from OpenADR reports'),
      webhooksDelivered: metrics.counter('webhooks_delivered_total', 'OpenADR notifications delivered'),
      webhooksFailed: metrics.counter('webhooks_failed_total', 'OpenADR notifications given up on'),
      mqttPublished: metrics.counter('mqtt_notifications_total', 'OpenADR notifications published over MQTT'),
    }
  }

  get address(): { host: string; port: number } | undefined {
    return this.server.address
  }

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.started) return
    this.started = true
    try {
      await this.state.start()
      await this.tokens.prune()
      await this.ensureControlProgram()
      await this.server.start(options)
    } catch (error) {
      this.started = false
      await this.state.stop()
      throw error
    }
    this.listening = true
    this.pruneTimer = setInterval(() => void this.tokens.prune().catch(() => {}), 10 * 60_000)
    this.pruneTimer.unref?.()
    this.components.dataPlane.onControl(
      { kinds: [this.init.config.resource_kind], commands: ['limit_power'] },
      (message) => this.onLimitPower(message),
    )
    if (this.mqttWanted) {
      const mqtt = this.components.dataPlane.mqtt
      if (mqtt?.url) mqtt.authorize((credentials) => this.authorizeMqtt(credentials))
      else
        this.components.logger.warn(
          { reason: mqtt?.unavailable ?? 'this data plane has no MQTT' },
          'openadr MQTT notifier not served by the node',
        )
    }
    const address = this.server.address!
    this.components.logger.info(
      { listen: `${address.host}:${address.port}`, clients: Object.keys(this.init.config.clients).length },
      'openadr vtn listening',
    )
  }

  async stop(): Promise<void> {
    if (!this.started) return
    this.started = false
    this.listening = false
    if (this.pruneTimer) clearInterval(this.pruneTimer)
    await this.webhooks.stop()
    await this.server.stop()
    await this.state.stop()
  }

  ready(): boolean {
    return this.listening
  }

  /** `mqtt_listen` is configured. */
  private get mqttWanted(): boolean {
    return this.init.config.mqtt_listen !== undefined
  }

  /** The MQTT listener VENs connect to, when the node serves one. */
  private get mqttUrl(): string | undefined {
    return this.mqttWanted ? this.components.dataPlane.mqtt?.url : undefined
  }

  /**
   * For `oe-node status` and the terminal UI: the listener, the MQTT binding, each VEN (its
   * resources, when its client was last heard from, its active events, its last report) and
   * the events in force or to come (at most STATUS_LIMIT of each, newest first).
   */
  status(): Record<string, unknown> {
    const address = this.server.address
    const now = Date.now()
    const active = this.state
      .list('event')
      .map((event) => ({
        event,
        timing: resolveEvent(event.body as never, Date.parse(event.createdDateTime), () => 0),
      }))
      .filter(({ timing }) => timing.end > now)
    // One pass over vens and resources: what each VEN client was granted, and each ven's resources.
    const resourcesOf = new Map<string, StoredObject[]>()
    for (const resource of this.state.list('resource')) {
      const venID = resource.body.venID as string
      resourcesOf.set(venID, [...(resourcesOf.get(venID) ?? []), resource])
    }
    const allVens = this.state.list('ven')
    const grantedTo = new Map<string, Set<string>>()
    for (const ven of allVens) {
      if (!ven.clientID) continue
      const targets = grantedTo.get(ven.clientID) ?? new Set<string>()
      for (const target of (ven.body.targets as string[] | undefined) ?? []) targets.add(target)
      for (const resource of resourcesOf.get(ven.id) ?? [])
        for (const target of (resource.body.targets as string[] | undefined) ?? []) targets.add(target)
      grantedTo.set(ven.clientID, targets)
    }
    const lastReports = new Map<string, StoredObject>()
    for (const report of this.state.list('report'))
      if (report.clientID) lastReports.set(report.clientID, report)
    const vens = allVens
      .reverse()
      .slice(0, STATUS_LIMIT)
      .map((ven) => {
        const clientId = ven.clientID
        const client: Client | undefined = clientId ? { clientId, role: 'ven' } : undefined
        const granted = clientId ? grantedTo.get(clientId) : undefined
        const report = clientId ? lastReports.get(clientId) : undefined
        const seen = clientId ? this.lastSeen.get(clientId) : undefined
        return {
          id: ven.id,
          name: ven.body.venName as string,
          ...(clientId ? { clientID: clientId } : {}),
          resources: (resourcesOf.get(ven.id) ?? []).map((resource) => resource.body.resourceName as string),
          ...(seen ? { lastSeen: seen } : {}),
          activeEvents: client
            ? active.filter(({ event }) => this.view(event, client, undefined, granted).visible).length
            : 0,
          ...(report ? { lastReport: reportSummary(report) } : {}),
        }
      })
    const programNames = new Map(
      this.state.list('program').map((program) => [program.id, program.body.programName as string]),
    )
    const mqttUrl = this.mqttUrl
    return {
      listen: address ? `${address.host}:${address.port}` : this.init.config.listen,
      versions: [...OPENADR_VERSIONS],
      clients: Object.keys(this.init.config.clients).length,
      objects: Object.fromEntries(
        (['program', 'event', 'report', 'subscription', 'ven', 'resource'] as const).map((kind) => [
          `${kind}s`,
          this.state.count(kind),
        ]),
      ),
      webhooksPending: this.webhooks.pending(),
      ...(this.mqttWanted
        ? {
            mqtt: mqttUrl
              ? { url: mqttUrl }
              : {
                  unavailable:
                    this.components.dataPlane.mqtt?.unavailable ??
                    'this data plane has no MQTT listener: enable MQTT on your NATS cluster',
                },
          }
        : {}),
      vens,
      activeEvents: active
        .reverse()
        .slice(0, STATUS_LIMIT)
        .map(({ event, timing }) => {
          const current = valuesAt(timing, now)[0]
          const targets = (event.body.targets as string[] | undefined) ?? []
          return {
            id: event.id,
            ...(typeof event.body.eventName === 'string' ? { name: event.body.eventName } : {}),
            program: programNames.get(event.body.programID as string) ?? (event.body.programID as string),
            ...(targets.length > 0 ? { targets } : {}),
            start: timing.start,
            ...(Number.isFinite(timing.end) ? { end: timing.end } : {}),
            ...(current ? { now: { type: current.type, value: current.value } } : {}),
          }
        }),
    }
  }

  // ---- requests --------------------------------------------------------------------------

  private async handle(request: VtnRequest): Promise<VtnResponse> {
    const { operation } = request
    try {
      switch (operation.id) {
        case 'fetchToken':
          return await this.fetchToken(request)
        case 'getAuthServerInfo':
          return { status: 200, body: { tokenURL: `${request.baseUrl}/auth/token` } }
      }
      const client = request.client!
      this.lastSeen.set(client.clientId, Date.now())
      if (operation.id === 'listAllNotifiers') {
        const url = this.mqttUrl
        return {
          status: 200,
          body: {
            WEBHOOK: true,
            ...(url ? { MQTT: mqttBinding([brokerUri(url, request.headers.get('host'))]) } : {}),
          },
        }
      }
      if (operation.id.startsWith('listAllMqtt')) return this.mqttTopics(request, client)
      const route = ROUTES.get(operation.id)
      if (!route) return problem({ status: request.contract.status(operation, 501, 404) })
      switch (route.action) {
        case 'search':
          return await this.search(request, route.kind, client)
        case 'read':
          return await this.read(request, route.kind, client)
        case 'create':
          return await this.state.exclusive(() => this.create(request, route.kind, client))
        case 'update':
          return await this.state.exclusive(() => this.update(request, route.kind, client))
        case 'delete':
          return await this.state.exclusive(() => this.remove(request, route.kind, client))
      }
    } catch (error) {
      if (error instanceof Refusal) return error.response
      if (error instanceof VtnConflictError || error instanceof VtnNameTakenError)
        return this.conflict(request, error.message).response
      throw error
    }
  }

  // ---- MQTT notifier binding ---------------------------------------------------------------

  /** Who may connect to the MQTT listener: a client with a valid bearer token as password. */
  private async authorizeMqtt(credentials: {
    username: string
    password: string
  }): Promise<{ subscribe: string[]; expiresAt?: number; name?: string } | { refused: string }> {
    const grant = await this.tokens.verify(credentials.password)
    if (!grant) return { refused: 'the password is not a valid bearer token of this VTN' }
    if (credentials.username !== grant.clientId)
      return { refused: "the username is not the bearer token's client id" }
    this.lastSeen.set(grant.clientId, Date.now())
    const base = { expiresAt: grant.expiresAt, name: grant.clientId }
    if (grant.role === 'bl') return { ...base, subscribe: BL_FILTERS }
    const vens = this.ownVens(grant.clientId)
    if (vens.length === 0) return { refused: 'this client has no ven object yet: register one first' }
    return { ...base, subscribe: venFilters(vens.map((ven) => ven.id)) }
  }

  private ownVens(clientId: string): StoredObject[] {
    return this.state.list('ven').filter((ven) => ven.clientID === clientId)
  }

  /** `/notifiers/mqtt/topics/…`: the topics this client may subscribe to for what it asked. */
  private mqttTopics(request: VtnRequest, client: Client): VtnResponse {
    if (!this.mqttUrl)
      return problem({ status: 404, detail: 'this VTN offers no MQTT notifier (see GET /notifiers)' })
    const { operation, params } = request
    const answer = (topics: OperationTopics): VtnResponse => ({ status: 200, body: { topics } })
    const isBl = client.role === 'bl'
    const granted = isBl ? undefined : this.granted(client)
    const visible = (kind: ObjectKind, id: string): StoredObject => {
      const object = this.state.get(kind, id)
      if (!object || !this.view(object, client, undefined, granted).visible) throw this.notFound(kind, id)
      return object
    }
    const ownVen = (): string => {
      const ven = this.ownVens(client.clientId)[0]
      if (!ven)
        throw new Refusal(
          problem({ status: 404, detail: 'this client has no ven object: register one first' }),
        )
      return ven.id
    }
    const blOnly = () => {
      if (!isBl)
        throw new Refusal(
          problem({
            status: 403,
            detail: `a VEN client subscribes under ${MQTT_ROOT}/vens/<its venID>/ (see /notifiers/mqtt/topics/vens/<venID>/…)`,
          }),
        )
    }
    switch (operation.id) {
      case 'listAllMqttNotifierTopicsPrograms':
        return answer(
          operationTopics(
            isBl ? topicBase.kind('program') : topicBase.venObjects(ownVen(), 'programs'),
            true,
          ),
        )
      case 'listAllMqttNotifierTopicsProgram': {
        const program = visible('program', params.programID!)
        return answer(
          operationTopics(
            isBl ? topicBase.program(program.id) : topicBase.venObjects(ownVen(), 'programs'),
            false,
          ),
        )
      }
      case 'listAllMqttNotifierTopicsProgramEvents': {
        const program = visible('program', params.programID!)
        return answer(
          operationTopics(
            isBl ? topicBase.programEvents(program.id) : topicBase.venObjects(ownVen(), 'events'),
            true,
          ),
        )
      }
      case 'listAllMqttNotifierTopicsEvents':
        blOnly()
        return answer(operationTopics(topicBase.kind('event'), true))
      case 'listAllMqttNotifierTopicsReports':
        blOnly()
        return answer(operationTopics(topicBase.kind('report'), true))
      case 'listAllMqttNotifierTopicsSubscriptions':
        blOnly()
        return answer(operationTopics(topicBase.kind('subscription'), true))
      case 'listAllMqttNotifierTopicsVens':
        blOnly()
        return answer(operationTopics(topicBase.kind('ven'), true))
      case 'listAllMqttNotifierTopicsResources':
        blOnly()
        return answer(operationTopics(topicBase.kind('resource'), true))
      case 'listAllMqttNotifierTopicsVen':
        return answer(operationTopics(topicBase.ven(visible('ven', params.venID!).id), false))
      case 'listAllMqttNotifierTopicsVenEvents':
        return answer(operationTopics(topicBase.venObjects(visible('ven', params.venID!).id, 'events'), true))
      case 'listAllMqttNotifierTopicsVenPrograms':
        return answer(
          operationTopics(topicBase.venObjects(visible('ven', params.venID!).id, 'programs'), true),
        )
      case 'listAllMqttNotifierTopicsVenResources':
        return answer(
          operationTopics(topicBase.venObjects(visible('ven', params.venID!).id, 'resources'), true),
        )
      default:
        return problem({ status: request.contract.status(operation, 501, 404) })
    }
  }

  /** Publish a change on its MQTT topics: the full object for BL, each VEN's view under its ven. */
  private publishMqtt(object: StoredObject, operation: Operation): void {
    const mqtt = this.components.dataPlane.mqtt
    if (!this.mqttWanted || !mqtt) return
    const codec = CODECS['3.1.0']
    const contract = contractFor('3.1.0')
    const encode = (targets: string[] | undefined): Uint8Array | undefined => {
      const rendered = codec.encode(
        object,
        object.kind === 'program' || object.kind === 'event' ? { targets: targets ?? [] } : {},
      )
      if (!rendered) return undefined
      const notification: Body = {
        objectType: OBJECT_TYPES[object.kind],
        operation: codec.notificationOperation(operation),
        object: rendered,
      }
      if (targets && targets.length > 0) notification.targets = codec.renderTargets(targets)
      const errors = contract.validateNotification(notification)
      if (errors.length > 0) {
        this.components.logger.error(
          { errors, objectType: notification.objectType },
          'openadr MQTT notification does not fit the document: not sent',
        )
        this.metric.invalid.inc()
        return undefined
      }
      return new TextEncoder().encode(JSON.stringify(notification))
    }
    const send = (topic: string, payload: Uint8Array) => {
      try {
        mqtt.publish(topic, payload)
        this.metric.mqttPublished.inc()
      } catch (error) {
        this.components.logger.warn({ topic, err: (error as Error).message }, 'MQTT notification not sent')
      }
    }
    const full = encode((object.body.targets as string[] | undefined) ?? [])
    if (full) for (const topic of blTopics(object, operation)) send(topic, full)
    if (object.kind !== 'program' && object.kind !== 'event') return
    for (const ven of this.state.list('ven')) {
      const clientId = ven.clientID
      const configured = clientId ? this.init.config.clients[clientId] : undefined
      if (!clientId || configured?.role !== 'ven') continue
      const client: Client = { clientId, role: 'ven' }
      const view = this.view(object, client, undefined, this.granted(client))
      if (!view.visible) continue
      const topic = venTopic(ven.id, object, operation)
      const payload = encode(view.targets)
      if (topic && payload) send(topic, payload)
    }
  }

  private async fetchToken(request: VtnRequest): Promise<VtnResponse> {
    let form = request.form
    if (!form && isObject(request.body)) {
      // Lenient: a JSON body with the same fields.
      form = new URLSearchParams(
        Object.entries(request.body).filter(
          (entry): entry is [string, string] => typeof entry[1] === 'string',
        ),
      )
    }
    const result = await this.tokens.issue(
      form ?? new URLSearchParams(),
      request.headers.get('authorization'),
    )
    if (!result.ok) {
      return problem({
        status: request.contract.status(request.operation, result.status, 403),
        detail: result.description,
        extra: { error: result.error, error_description: result.description },
        ...(result.status === 401 ? { headers: { 'www-authenticate': 'Basic realm="openadr"' } } : {}),
      })
    }
    return {
      status: 200,
      body: { access_token: result.accessToken, token_type: 'Bearer', expires_in: result.expiresIn },
      headers: { pragma: 'no-cache' },
    }
  }

  /** Conflict: 409 where the document lists it for the operation, else 400. */
  private conflict(request: VtnRequest, detail: string): Refusal {
    return new Refusal(problem({ status: request.contract.status(request.operation, 409, 400), detail }))
  }

  private notFound(kind: ObjectKind, id: string): Refusal {
    return new Refusal(problem({ status: 404, detail: `no ${kind} '${id}'` }))
  }

  /** The VEN's granted targets: its ven object's and that ven's resources' (none without a ven). */
  private granted(client: Client): Set<string> | undefined {
    const vens = this.state.list('ven').filter((ven) => ven.clientID === client.clientId)
    if (vens.length === 0) return undefined
    const targets = new Set<string>()
    for (const ven of vens) {
      for (const target of (ven.body.targets as string[] | undefined) ?? []) targets.add(target)
      for (const resource of this.state.list('resource')) {
        if (resource.body.venID !== ven.id) continue
        for (const target of (resource.body.targets as string[] | undefined) ?? []) targets.add(target)
      }
    }
    return targets
  }

  /** Visible to this client? With the targets to show for programs and events. */
  private view(
    object: StoredObject,
    client: Client,
    requested: readonly string[] | undefined,
    granted: ReadonlySet<string> | undefined,
  ): { visible: boolean; targets?: string[] } {
    if (OWNED_KINDS.has(object.kind)) {
      if (!owns(client, object)) return { visible: false }
      if (requested && requested.length > 0) {
        const targets = (object.body.targets as string[] | undefined) ?? []
        if (!targets.some((target) => requested.includes(target))) return { visible: false }
      }
      return { visible: true }
    }
    return targetView(client, object.body.targets as string[] | undefined, granted, requested)
  }

  private render(request: VtnRequest, object: StoredObject, targets?: string[]): Body | undefined {
    return request.codec.encode(
      object,
      object.kind === 'program' || object.kind === 'event'
        ? { ...(targets ? { targets } : { targets: [] }) }
        : {},
    )
  }

  private async search(request: VtnRequest, kind: ObjectKind, client: Client): Promise<VtnResponse> {
    const { query, codec } = request
    const requested = codec.queryTargets(query)
    const granted = client.role === 'ven' ? this.granted(client) : undefined
    const now = Date.now()
    const matches = (object: StoredObject): boolean => {
      const body = object.body
      if (
        query.programID !== undefined &&
        body.programID !== query.programID &&
        !(kind === 'program' && object.id === query.programID)
      )
        return false
      if (query.eventID !== undefined && body.eventID !== query.eventID) return false
      if (query.clientName !== undefined && body.clientName !== query.clientName) return false
      if (query.venName !== undefined && body.venName !== query.venName) return false
      if (query.resourceName !== undefined && body.resourceName !== query.resourceName) return false
      const venID = request.params.venID ?? query.venID
      if (kind === 'resource' && venID !== undefined && body.venID !== venID) return false
      if (Array.isArray(query.objects)) {
        const types = new Set(
          ((body.objectOperations as Body[] | undefined) ?? []).flatMap(
            (entry) => (entry.objects as string[]) ?? [],
          ),
        )
        if (!(query.objects as string[]).some((type) => types.has(type))) return false
      }
      if (kind === 'event' && query.active === true) {
        if (resolveEvent(body as never, Date.parse(object.createdDateTime), () => 0).end <= now) return false
      }
      return true
    }
    if (kind === 'resource' && request.params.venID !== undefined) {
      const ven = await this.state.fetch('ven', request.params.venID)
      if (!ven || !owns(client, ven)) throw this.notFound('ven', request.params.venID)
    }
    const skip = (query.skip as number | undefined) ?? 0
    const limit = (query.limit as number | undefined) ?? DEFAULT_LIMIT
    const out: Body[] = []
    let skipped = 0
    const delivered: StoredObject[] = []
    for (const object of this.state.list(kind)) {
      if (out.length >= limit) break
      if (!matches(object)) continue
      const view = this.view(object, client, requested, granted)
      if (!view.visible) continue
      const rendered = this.render(request, object, view.targets)
      if (!rendered) continue
      if (skipped < skip) {
        skipped += 1
        continue
      }
      out.push(rendered)
      if (kind === 'event' && client.role === 'ven') delivered.push(object)
    }
    // Recorded before the VEN has the answer, so 'Delivered' comes before the VEN's own result.
    for (const event of delivered) await this.markDelivered(event)
    return { status: 200, body: out }
  }

  private async read(request: VtnRequest, kind: ObjectKind, client: Client): Promise<VtnResponse> {
    const object = this.visibleObject(
      request,
      kind,
      client,
      await this.state.fetch(kind, this.pathId(request, kind)),
    )
    const view = this.view(object.object, client, undefined, object.granted)
    const rendered = this.render(request, object.object, view.targets)
    if (!rendered)
      throw new Refusal(
        problem({ status: 404, detail: `this ${kind} cannot be shown in OpenADR ${request.version}` }),
      )
    if (kind === 'event' && client.role === 'ven') await this.markDelivered(object.object)
    return { status: 200, body: rendered }
  }

  /** The id in the path. */
  private pathId(request: VtnRequest, kind: ObjectKind): string {
    return request.params[OPERATIONS[kind].idParam]!
  }

  /** The object of the path, if this client may see it (404 otherwise: others' objects read as absent). */
  private visibleObject(
    request: VtnRequest,
    kind: ObjectKind,
    client: Client,
    object: StoredObject | undefined,
  ): { object: StoredObject; granted: Set<string> | undefined } {
    const id = this.pathId(request, kind)
    const granted = client.role === 'ven' ? this.granted(client) : undefined
    if (!object || !this.view(object, client, undefined, granted).visible) throw this.notFound(kind, id)
    if (
      kind === 'resource' &&
      request.params.venID !== undefined &&
      object.body.venID !== request.params.venID
    )
      throw this.notFound(kind, id)
    return { object, granted }
  }

  /** Read, check and decode a request body (lenient in, then the document's schema). */
  private decodeBody(request: VtnRequest, kind: ObjectKind, client: Client, fill: Body = {}): Body {
    if (request.body === undefined)
      throw new Refusal(problem({ status: 400, detail: 'a JSON body is required' }))
    if (!isObject(request.body))
      throw new Refusal(problem({ status: 400, detail: 'the body must be a JSON object' }))
    const prepared = request.codec.prepare(kind, { ...fill, ...stripFilled(request.body, fill) }, client)
    const errors = request.contract.validateRequest(request.operation, prepared)
    if (errors.length > 0) throw new Refusal(problem({ status: 400, detail: errors.join('; ') }))
    return request.codec.decode(kind, prepared as Body, client)
  }

  private forbidden(request: VtnRequest, detail: string): Refusal {
    return new Refusal(problem({ status: request.contract.status(request.operation, 403, 400), detail }))
  }

  private async create(request: VtnRequest, kind: ObjectKind, client: Client): Promise<VtnResponse> {
    if (!mayWrite(client, kind, 'create'))
      throw this.forbidden(request, `a ${client.role.toUpperCase()} client may not create ${kind}s`)
    const fill: Body = {}
    if (kind === 'resource' && request.params.venID) fill.venID = request.params.venID
    if (
      kind === 'resource' &&
      client.role === 'bl' &&
      request.version === '3.1.0' &&
      isObject(request.body)
    ) {
      const ven =
        typeof request.body.venID === 'string' ? await this.state.fetch('ven', request.body.venID) : undefined
      if (ven?.clientID && request.body.clientID === undefined) fill.clientID = ven.clientID
    }
    const body = this.decodeBody(request, kind, client, fill)
    const now = isoString(Date.now())
    const object: StoredObject = { kind, id: newId(), createdDateTime: now, modificationDateTime: now, body }
    await this.checkAndComplete(request, object, client, undefined)
    await this.state.create(object, this.claims(object, undefined, client))
    await this.afterWrite(object, 'CREATE', undefined)
    if (kind === 'report') await this.pruneReports()
    const rendered = this.render(request, object, (object.body.targets as string[] | undefined) ?? [])
    return { status: 201, body: rendered }
  }

  /**
   * Change the object from its newest version: when another replica changed it meanwhile, the
   * request is applied again to that one (the VTN's own merges, such as the targets a VEN may
   * not change, then keep the other change), or refused with 409 after a few tries.
   */
  private async update(request: VtnRequest, kind: ObjectKind, client: Client): Promise<VtnResponse> {
    const id = this.pathId(request, kind)
    // Absent or not this client's: 404 before anything is written.
    this.visibleObject(request, kind, client, await this.state.fetch(kind, id))
    const committed = await this.state.changeObject(
      kind,
      id,
      async (current) => {
        const { object: existing } = this.visibleObject(request, kind, client, current)
        if (!mayWrite(client, kind, 'update'))
          throw this.forbidden(request, `a ${client.role.toUpperCase()} client may not change ${kind}s`)
        const fill: Body = {}
        if (kind === 'resource') fill.venID = request.params.venID ?? existing.body.venID
        if ((kind === 'ven' || kind === 'resource') && existing.clientID && request.version === '3.1.0')
          fill.clientID = existing.clientID
        const body = this.decodeBody(request, kind, client, fill)
        const changed: StoredObject = {
          ...existing,
          modificationDateTime: isoString(
            Math.max(Date.now(), Date.parse(existing.modificationDateTime) + 1),
          ),
          body,
        }
        await this.checkAndComplete(request, changed, client, existing)
        return changed
      },
      { claims: (next, current) => this.claims(next, current, client) },
    )
    const object = committed.after!
    await this.afterWrite(object, 'UPDATE', committed.before)
    const view = this.view(
      object,
      client,
      undefined,
      client.role === 'ven' ? this.granted(client) : undefined,
    )
    return { status: 200, body: this.render(request, object, view.targets) }
  }

  private async remove(request: VtnRequest, kind: ObjectKind, client: Client): Promise<VtnResponse> {
    const id = this.pathId(request, kind)
    // Absent or not this client's: 404 before anything is written.
    this.visibleObject(request, kind, client, await this.state.fetch(kind, id))
    let rendered: Body | undefined
    const committed = await this.state.changeObject(kind, id, (current) => {
      const { object, granted } = this.visibleObject(request, kind, client, current)
      if (!mayWrite(client, kind, 'delete'))
        throw this.forbidden(request, `a ${client.role.toUpperCase()} client may not delete ${kind}s`)
      rendered = this.render(request, object, this.view(object, client, undefined, granted).targets)
      return 'delete'
    })
    const object = committed.before!
    await this.afterWrite(object, 'DELETE', object)
    if (kind === 'ven') {
      for (const resource of this.state.list('resource')) {
        if (resource.body.venID !== object.id) continue
        const gone = await this.state.changeObject('resource', resource.id, (current) =>
          current ? 'delete' : undefined,
        )
        if (gone.changed && gone.before) await this.afterWrite(gone.before, 'DELETE', gone.before)
      }
    }
    return { status: 200, body: rendered }
  }

  /** Drop the oldest reports beyond `max_reports` (memory and KV stay bounded). */
  private async pruneReports(): Promise<void> {
    const excess = this.state.count('report') - this.init.config.max_reports
    if (excess <= 0) return
    for (const report of this.state.list('report').slice(0, excess))
      await this.state.forget('report', report.id)
  }

  /**
   * The unique names a write takes (new, or changed by it): the state takes each in the store
   * before writing, so two replicas cannot give one name to two objects (409 for the second).
   */
  private claims(object: StoredObject, existing: StoredObject | undefined, client: Client): UniqueName[] {
    const body = object.body
    const changed = (field: string) => existing?.body[field] !== body[field]
    switch (object.kind) {
      case 'program': {
        const name = String(body.programName)
        return changed('programName')
          ? [{ key: uniqueKey('program', name), taken: `a program named '${name}' exists` }]
          : []
      }
      case 'ven': {
        const name = String(body.venName)
        return [
          ...(client.role === 'ven' && !existing
            ? [
                {
                  key: uniqueKey('ven-client', client.clientId),
                  taken: 'this client already has a ven object',
                },
              ]
            : []),
          ...(changed('venName')
            ? [{ key: uniqueKey('ven', name), taken: `a ven named '${name}' exists` }]
            : []),
        ]
      }
      case 'resource': {
        const venID = String(body.venID)
        const name = String(body.resourceName)
        return changed('resourceName') || changed('venID')
          ? [
              {
                key: uniqueKey('resource', venID, name),
                taken: `ven '${venID}' has a resource named '${name}'`,
              },
            ]
          : []
      }
      default:
        return []
    }
  }

  /** Per-kind rules on create and update: references, names, owners, what a VEN may not change. */
  private async checkAndComplete(
    request: VtnRequest,
    object: StoredObject,
    client: Client,
    existing: StoredObject | undefined,
  ): Promise<void> {
    const body = object.body
    const others = (kind: ObjectKind) =>
      this.state.list(kind).filter((candidate) => candidate.id !== object.id)
    const lookup = (kind: ObjectKind, id: unknown) =>
      typeof id === 'string' ? this.state.fetch(kind, id) : Promise.resolve(undefined)
    switch (object.kind) {
      case 'program':
        if (others('program').some((program) => program.body.programName === body.programName))
          throw this.conflict(request, `a program named '${String(body.programName)}' exists`)
        break
      case 'event':
        if (!(await lookup('program', body.programID)))
          throw this.conflict(request, `no program '${String(body.programID)}'`)
        break
      case 'subscription':
        if (body.programID !== undefined && !(await lookup('program', body.programID)))
          throw this.conflict(request, `no program '${String(body.programID)}'`)
        for (const entry of (body.objectOperations as Body[] | undefined) ?? []) {
          // Webhooks are HTTP: no file:, data: or other schemes the VTN's fetch would follow.
          if (!/^https?:\/\//i.test(String(entry.callbackUrl)))
            throw new Refusal(problem({ status: 400, detail: 'callbackUrl must be an http(s) URL' }))
        }
        object.clientID = existing?.clientID ?? client.clientId
        body.version = request.version
        delete body.clientID
        break
      case 'report': {
        const event = await lookup('event', body.eventID)
        const granted = client.role === 'ven' ? this.granted(client) : undefined
        if (!event || !this.view(event, client, undefined, granted).visible)
          throw this.conflict(request, `no event '${String(body.eventID)}'`)
        if (body.programID !== undefined && body.programID !== event.body.programID)
          throw new Refusal(
            problem({
              status: 400,
              detail: `event '${event.id}' is not of program '${String(body.programID)}'`,
            }),
          )
        body.programID = event.body.programID
        object.clientID = existing?.clientID ?? client.clientId
        delete body.clientID
        break
      }
      case 'ven': {
        if (client.role === 'ven') {
          object.clientID = client.clientId
          // Targets are BL's to grant: a VEN's update keeps them.
          if (existing?.body.targets !== undefined) body.targets = existing.body.targets
          else delete body.targets
          if (!existing && this.state.list('ven').some((ven) => ven.clientID === client.clientId))
            throw this.conflict(request, 'this client already has a ven object')
        } else {
          object.clientID = (body.clientID as string | undefined) ?? existing?.clientID
        }
        delete body.clientID
        if (object.clientID === undefined) delete object.clientID
        if (others('ven').some((ven) => ven.body.venName === body.venName))
          throw this.conflict(request, `a ven named '${String(body.venName)}' exists`)
        break
      }
      case 'resource': {
        const ven = await lookup('ven', body.venID)
        const granted = client.role === 'ven' ? this.granted(client) : undefined
        if (!ven || !this.view(ven, client, undefined, granted).visible)
          throw new Refusal(problem({ status: 404, detail: `no ven '${String(body.venID)}'` }))
        object.clientID = ven.clientID
        if (object.clientID === undefined) delete object.clientID
        delete body.clientID
        if (client.role === 'ven') {
          if (existing?.body.targets !== undefined) body.targets = existing.body.targets
          else delete body.targets
        }
        if (
          others('resource').some(
            (resource) => resource.body.venID === ven.id && resource.body.resourceName === body.resourceName,
          )
        )
          throw this.conflict(request, `ven '${ven.id}' has a resource named '${String(body.resourceName)}'`)
        break
      }
    }
  }

  // ---- after a write: data plane, control results, notifications ----------------------------

  private async afterWrite(
    object: StoredObject,
    operation: Operation,
    previous: StoredObject | undefined,
  ): Promise<void> {
    try {
      if (object.kind === 'resource' && operation !== 'DELETE') await this.describeResource(object)
      if (object.kind === 'report' && operation !== 'DELETE')
        await this.publishReport(object, operation === 'UPDATE' ? previous : undefined)
    } catch (error) {
      // The object is stored; the data plane catches up on the next change.
      this.components.logger.warn(
        { kind: object.kind, id: object.id, err: (error as Error).message },
        'openadr object not mapped to the data plane',
      )
    }
    this.notify(object, operation)
  }

  /** The node resource of a VEN resource. */
  private nodeResource(
    resource: StoredObject,
  ): { kind: ResourceKind; rid: string; venName: string } | undefined {
    const ven = this.state.get('ven', resource.body.venID as string)
    if (!ven) return undefined
    const venName = ven.body.venName as string
    return {
      kind: this.init.config.resource_kind,
      rid: resourceIdFor(venName, resource.body.resourceName as string),
      venName,
    }
  }

  private async describeResource(resource: StoredObject): Promise<void> {
    const target = this.nodeResource(resource)
    if (!target) return
    const { dataPlane } = this.components
    const existing = await dataPlane.getResource(target.kind, target.rid)
    await dataPlane.upsertResource(
      dropUndefined({
        kind: target.kind,
        rid: target.rid,
        site: existing?.site,
        name: `${target.venName}/${resource.body.resourceName as string}`.slice(0, 256),
        attrs: {
          ...(existing?.attrs ?? {}),
          source: 'openadr-vtn',
          venName: target.venName,
          venID: resource.body.venID as string,
          resourceName: resource.body.resourceName as string,
          resourceID: resource.id,
          ...(resource.clientID ? { clientID: resource.clientID } : {}),
        },
      }),
    )
  }

  private async publishReport(report: StoredObject, previous: StoredObject | undefined): Promise<void> {
    const ven = this.state.list('ven').find((candidate) => candidate.clientID === report.clientID)
    const event = this.state.get('event', report.body.eventID as string)
    const descriptors = (event?.body.reportDescriptors as Body[] | undefined) ?? []
    const resolveTarget = (resourceName: string) => {
      if (!ven) return undefined
      const resource = this.state
        .list('resource')
        .find((candidate) => candidate.body.venID === ven.id && candidate.body.resourceName === resourceName)
      return resource ? this.nodeResource(resource) : undefined
    }
    const { records } = reportToTelemetry(report.body, resolveTarget, descriptors)
    let fresh = records
    if (previous) {
      const seen = new Set(
        reportToTelemetry(previous.body, resolveTarget, descriptors).records.map(
          (record) => `${record.rid}\u0000${record.q}\u0000${record.t}`,
        ),
      )
      fresh = records.filter((record) => !seen.has(`${record.rid}\u0000${record.q}\u0000${record.t}`))
    }
    if (fresh.length > 0) {
      await this.components.dataPlane.publishTelemetry(fresh)
      this.metric.records.inc(fresh.length)
    }
    // A report on a control event: the VEN has taken the limit.
    const control = this.state.controlByEvent(report.body.eventID as string)
    if (control && ven && control.venID === ven.id) {
      const setpoint = records.find((record) => record.q === 'power_limit' && record.rid === control.rid)
      await this.controlResult(
        control.rid,
        dropUndefined({
          status: 'Accepted',
          eventID: control.eventID,
          reportID: report.id,
          v: setpoint?.v ?? control.watts,
          until: control.until,
        }),
      )
    }
  }

  private notify(object: StoredObject, operation: Operation): void {
    this.publishMqtt(object, operation)
    const objectType = OBJECT_TYPES[object.kind]
    for (const subscription of this.state.list('subscription')) {
      const body = subscription.body
      const entries = ((body.objectOperations as Body[] | undefined) ?? []).filter(
        (entry) =>
          ((entry.objects as string[] | undefined) ?? []).includes(objectType) &&
          ((entry.operations as string[] | undefined) ?? []).includes(operation),
      )
      if (entries.length === 0) continue
      if (body.programID !== undefined) {
        const programID = object.kind === 'program' ? object.id : object.body.programID
        if (programID !== body.programID) continue
      }
      const clientId = subscription.clientID
      const configured = clientId ? this.init.config.clients[clientId] : undefined
      if (!clientId || !configured) continue
      const subscriber: Client = { clientId, role: configured.role }
      const requested = body.targets as string[] | undefined
      const granted = subscriber.role === 'ven' ? this.granted(subscriber) : undefined
      const view = this.view(object, subscriber, requested, granted)
      if (!view.visible) continue
      const version: OpenAdrVersion = body.version === '3.0.1' ? '3.0.1' : '3.1.0'
      const codec = CODECS[version]
      const rendered = codec.encode(
        object,
        object.kind === 'program' || object.kind === 'event' ? { targets: view.targets ?? [] } : {},
      )
      if (!rendered) continue
      const notification: Body = {
        objectType,
        operation: codec.notificationOperation(operation),
        object: rendered,
      }
      if (view.targets && view.targets.length > 0) notification.targets = codec.renderTargets(view.targets)
      const errors = contractFor(version).validateNotification(notification)
      if (errors.length > 0) {
        this.components.logger.error(
          { errors, objectType, version },
          'openadr notification does not fit the document: not sent',
        )
        this.metric.invalid.inc()
        continue
      }
      for (const entry of entries) {
        this.webhooks.send({
          url: entry.callbackUrl as string,
          body: notification,
          bearerToken: entry.bearerToken as string | undefined,
          label: `${objectType} ${operation} ${object.id}`,
        })
      }
    }
  }

  // ---- control: limit_power → event ---------------------------------------------------------

  /**
   * The program of the node's control events, made once: its id comes from its name, so
   * replicas starting together make the same object (`create` lets one of them), and the other
   * finds the first's.
   */
  private async ensureControlProgram(): Promise<void> {
    const name = this.init.config.control_program
    const byName = () => this.state.list('program').find((program) => program.body.programName === name)
    const existing = byName()
    if (existing) {
      this.controlProgramId = existing.id
      return
    }
    const now = isoString(Date.now())
    const program: StoredObject = {
      kind: 'program',
      id: fixedId(name),
      createdDateTime: now,
      modificationDateTime: now,
      body: {
        programName: name,
        payloadDescriptors: [
          { objectType: 'EVENT_PAYLOAD_DESCRIPTOR', payloadType: 'IMPORT_CAPACITY_LIMIT', units: 'KW' },
        ],
      },
    }
    try {
      this.controlProgramId = (
        await this.state.create(program, [
          { key: uniqueKey('program', name), taken: `a program named '${name}' exists` },
        ])
      ).id
    } catch (error) {
      if (!(error instanceof VtnConflictError || error instanceof VtnNameTakenError)) throw error
      // Made through another replica at the same moment (or, by that name, by BL).
      this.controlProgramId = ((await this.state.fetch('program', program.id)) ?? byName())?.id ?? program.id
    }
  }

  private findResourceByRid(rid: string): { resource: StoredObject; ven: StoredObject } | undefined {
    for (const resource of this.state.list('resource')) {
      const ven = this.state.get('ven', resource.body.venID as string)
      if (ven && resourceIdFor(ven.body.venName as string, resource.body.resourceName as string) === rid)
        return { resource, ven }
    }
    return undefined
  }

  private async controlResult(rid: string, result: Record<string, unknown>): Promise<void> {
    if (!this.started) return
    await this.components.dataPlane.publishEvent(this.init.config.resource_kind, rid, 'control_result', {
      command: 'limit_power',
      ...result,
      t: Date.now(),
    })
  }

  private async onLimitPower(message: ControlMessage): Promise<void> {
    // A resource registered through another replica a moment ago: read what this one lacks.
    let found = this.findResourceByRid(message.rid)
    if (!found) {
      await Promise.all([this.state.refresh('ven'), this.state.refresh('resource')]).catch(() => {})
      found = this.findResourceByRid(message.rid)
    }
    if (!found) {
      this.components.logger.debug({ rid: message.rid }, 'limit_power for a resource no VEN has: ignored')
      return
    }
    const { v, u, until, source } = message.payload
    const factor = u === undefined || u === 'W' ? 1 : u === 'kW' ? 1000 : undefined
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || factor === undefined)
      return this.controlResult(message.rid, {
        status: 'Invalid',
        reason: 'v must be a non-negative number in W or kW',
      })
    if (until !== undefined && until !== null && (typeof until !== 'number' || !Number.isFinite(until)))
      return this.controlResult(message.rid, {
        status: 'Invalid',
        reason: 'until must be epoch milliseconds',
      })
    const watts = v * factor
    const now = Date.now()
    if (typeof until === 'number' && until <= now)
      return this.controlResult(message.rid, { status: 'Expired', v: watts, until })
    await this.state.exclusive(async () => {
      const target = controlTarget(message.rid)
      // Grant the target on the resource object, as BL would.
      const granted = await this.state.changeObject('resource', found.resource.id, (resource) => {
        const targets = (resource?.body.targets as string[] | undefined) ?? []
        if (!resource || targets.includes(target)) return undefined
        return {
          ...resource,
          modificationDateTime: isoString(Math.max(now, Date.parse(resource.modificationDateTime) + 1)),
          body: { ...resource.body, targets: [...targets, target] },
        }
      })
      if (granted.changed && granted.after) this.notify(granted.after, 'UPDATE')
      if (!this.controlProgramId || !this.state.get('program', this.controlProgramId))
        await this.ensureControlProgram()
      const body = limitToEventBody({
        programID: this.controlProgramId!,
        rid: message.rid,
        target,
        watts,
        until: typeof until === 'number' ? until : undefined,
        now,
        source: typeof source === 'string' ? source : message.from,
      })
      // The resource's control record names its one event (a new one if it has none, or BL
      // deleted it); recorded first, so two replicas commanding one resource share that event.
      const control = await this.state.changeControl(message.rid, (record) =>
        dropUndefined({
          ...record,
          rid: message.rid,
          eventID: record && this.state.get('event', record.eventID) ? record.eventID : newId(now),
          resourceID: found.resource.id,
          venID: found.ven.id,
          watts,
          until: typeof until === 'number' ? until : undefined,
          delivered: false,
        }),
      )
      const eventID = control.after!.eventID
      const stamp = isoString(now)
      const written = await this.state.changeObject('event', eventID, (previous) =>
        previous
          ? {
              ...previous,
              modificationDateTime: isoString(Math.max(now, Date.parse(previous.modificationDateTime) + 1)),
              body,
            }
          : { kind: 'event', id: eventID, createdDateTime: stamp, modificationDateTime: stamp, body },
      )
      const event = written.after!
      this.notify(event, written.before ? 'UPDATE' : 'CREATE')
      await this.controlResult(
        message.rid,
        dropUndefined({
          status: 'Sent',
          eventID: event.id,
          v: watts,
          until: typeof until === 'number' ? until : undefined,
        }),
      )
    })
  }

  /** The targeted VEN has read its control event. */
  private async markDelivered(event: StoredObject): Promise<void> {
    const record = this.state.controlByEvent(event.id)
    if (!record || record.delivered) return
    try {
      // Once, whichever replica the VEN read it through: the replica that records it reports it.
      const marked = await this.state.changeControl(record.rid, (current) =>
        current && current.eventID === event.id && !current.delivered
          ? { ...current, delivered: true }
          : undefined,
      )
      if (!marked.changed) return
      await this.controlResult(
        record.rid,
        dropUndefined({ status: 'Delivered', eventID: event.id, v: record.watts, until: record.until }),
      )
    } catch (error) {
      this.components.logger.warn(
        { rid: record.rid, err: (error as Error).message },
        'control delivery not recorded',
      )
    }
  }
}

/** The request body without the members `fill` provides (fill wins over client values). */
function stripFilled(body: Record<string, unknown>, fill: Body): Body {
  const out: Body = { ...body }
  for (const key of Object.keys(fill)) delete out[key]
  return out
}

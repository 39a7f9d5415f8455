/**
 * How a VEN hears of events between polls (config `notifications`):
 * - `webhook`: it serves a callback (`webhook_listen`) and keeps a subscription on the VTN for
 *   events (3.1.0: one for all programs; 3.0.1, where a subscription names its program: one per
 *   program it sees) with its callback URL and a bearer token it chose. The VTN sends that token
 *   back; anything else gets 401.
 * - `mqtt` (3.1.0): it reads the VTN's `/notifiers` (the broker, OAUTH2_BEARER_TOKEN login) and
 *   `/notifiers/mqtt/topics/vens/{venID}/events`, logs in with its client id and a bearer token,
 *   subscribes, and logs in again with a fresh token whenever the connection ends (the VTN ends
 *   it when the token expires).
 * Either way each notification is handed to `onNotification`; polling goes on as a safety net.
 */
import { timingSafeEqual } from 'node:crypto'
import type { MqttClient } from 'mqtt'
import type { Logger } from '../../data-plane/index.ts'
import type { VtnClient } from './client.ts'
import { OpenAdrError, OpenAdrListenError } from './errors.ts'
import type { Body } from './model.ts'

export interface VenNotification {
  objectType: string
  operation: string
  object: Body
}

export interface VenNotifierComponents {
  client: VtnClient
  logger: Logger
  onNotification(notification: VenNotification): void
}

export interface VenNotifier {
  /** Serve what must be served before the VTN is told about it. */
  start(options?: { signal?: AbortSignal }): Promise<void>
  /** Make sure the VTN notifies this VEN (`recheck`: look again even if it did last time). */
  maintain(venID: string, recheck: boolean, options?: { signal?: AbortSignal }): Promise<void>
  stop(): Promise<void>
  status(): Record<string, unknown>
}

const MAX_NOTIFICATION_BYTES = 1024 * 1024
const EVENT_OPERATIONS = ['CREATE', 'UPDATE', 'DELETE']

/** A notification body as the VTN sends it; undefined when it is not one. */
export function parseNotification(input: unknown): VenNotification | undefined {
  if (typeof input !== 'object' || input === null) return undefined
  const { objectType, operation, object } = input as Record<string, unknown>
  if (typeof objectType !== 'string' || typeof operation !== 'string') return undefined
  if (typeof object !== 'object' || object === null || Array.isArray(object)) return undefined
  if (typeof (object as Body).id !== 'string') return undefined
  return { objectType, operation, object: object as Body }
}

function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given)
  const b = Buffer.from(expected)
  return a.length === b.length && timingSafeEqual(a, b)
}

export interface WebhookNotifierInit {
  host: string
  port: number
  /** The callback URL the VTN is given; default `http://<host>:<port>/openadr/notifications`. */
  url?: string | undefined
  /** The token the VTN must send back. */
  bearerToken: string
  clientName: string
  version: '3.1.0' | '3.0.1'
}

export class WebhookNotifier implements VenNotifier {
  private server: ReturnType<typeof Bun.serve> | undefined
  private callbackUrl: string | undefined
  private subscribedFor: string | undefined
  private received = 0
  private refused = 0
  private lastError: string | undefined

  constructor(
    private readonly init: WebhookNotifierInit,
    private readonly components: VenNotifierComponents,
  ) {}

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.server) return
    options.signal?.throwIfAborted()
    try {
      this.server = Bun.serve({
        hostname: this.init.host,
        port: this.init.port,
        fetch: (request) => this.handle(request),
      })
    } catch (error) {
      throw new OpenAdrListenError(
        `openadr-ven cannot listen on ${this.init.host}:${this.init.port}: ${(error as Error).message}`,
        { cause: error },
      )
    }
    const host = this.init.host.includes(':') ? `[${this.init.host}]` : this.init.host
    this.callbackUrl = this.init.url ?? `http://${host}:${this.server.port}/openadr/notifications`
    this.components.logger.info({ url: this.callbackUrl }, 'webhook callback served')
  }

  async stop(): Promise<void> {
    const server = this.server
    this.server = undefined
    await server?.stop(true)
  }

  status(): Record<string, unknown> {
    return {
      ...(this.callbackUrl ? { callbackUrl: this.callbackUrl } : {}),
      subscribed: this.subscribedFor !== undefined,
      received: this.received,
      refused: this.refused,
      ...(this.lastError ? { lastError: this.lastError } : {}),
    }
  }

  private async handle(request: Request): Promise<Response> {
    const path = new URL(request.url).pathname
    const expected = this.callbackUrl ? new URL(this.callbackUrl).pathname : undefined
    // Behind a proxy the path may differ from webhook_url's: any path is taken then.
    if (this.init.url === undefined && path !== expected) return new Response(null, { status: 404 })
    if (request.method !== 'POST') return new Response(null, { status: 405, headers: { allow: 'POST' } })
    const authorization = request.headers.get('authorization') ?? ''
    const token = /^Bearer (.+)$/i.exec(authorization)?.[1]
    if (!token || !sameSecret(token, this.init.bearerToken)) {
      this.refused += 1
      return new Response(null, { status: 401, headers: { 'www-authenticate': 'Bearer' } })
    }
    if (Number(request.headers.get('content-length') ?? 0) > MAX_NOTIFICATION_BYTES)
      return new Response(null, { status: 413 })
    const text = await request.text()
    if (text.length > MAX_NOTIFICATION_BYTES) return new Response(null, { status: 413 })
    let parsed: unknown
    try {
      parsed = JSON.parse(text)
    } catch {
      return new Response(null, { status: 400 })
    }
    const notification = parseNotification(parsed)
    if (!notification) return new Response(null, { status: 400 })
    this.received += 1
    this.components.onNotification(notification)
    return new Response(null, { status: 200 })
  }

  async maintain(venID: string, recheck: boolean, options: { signal?: AbortSignal } = {}): Promise<void> {
    if (!this.callbackUrl) return
    if (!recheck && this.subscribedFor === venID) return
    const { client } = this.components
    const v310 = this.init.version === '3.1.0'
    try {
      // 3.1.0: one subscription for all programs; 3.0.1 names a program in each.
      const programs: (string | undefined)[] = v310
        ? [undefined]
        : (
            (await client.call<Body[]>('searchAllPrograms', { query: { limit: 50 } }, options)).body ?? []
          ).map((program) => String(program.id))
      const own = (
        (await client.call<Body[]>('searchSubscriptions', { query: { limit: 50 } }, options)).body ?? []
      ).filter((subscription) => subscription.clientName === this.init.clientName)
      const wanted = (programID: string | undefined): Body => ({
        clientName: this.init.clientName,
        ...(programID ? { programID } : {}),
        objectOperations: [
          {
            objects: ['EVENT'],
            operations: EVENT_OPERATIONS,
            callbackUrl: this.callbackUrl!,
            bearerToken: this.init.bearerToken,
          },
        ],
      })
      const fits = (subscription: Body, programID: string | undefined) => {
        const operations = (subscription.objectOperations as Body[] | undefined) ?? []
        return (
          subscription.programID === programID &&
          operations.length === 1 &&
          operations[0]!.callbackUrl === this.callbackUrl &&
          operations[0]!.bearerToken === this.init.bearerToken
        )
      }
      const kept = new Set<string>()
      for (const programID of programs) {
        const found = own.find((subscription) => fits(subscription, programID))
        if (found) {
          kept.add(String(found.id))
          continue
        }
        const created = await client.call<Body>('createSubscription', { body: wanted(programID) }, options)
        kept.add(String(created.body.id))
        this.components.logger.info(
          { subscriptionID: created.body.id, programID, url: this.callbackUrl },
          'subscribed to event notifications',
        )
      }
      // Ours from before (another URL or token): the VTN would call a callback nobody serves.
      for (const subscription of own) {
        if (kept.has(String(subscription.id))) continue
        await client
          .call('deleteSubscription', { params: { subscriptionID: String(subscription.id) } }, options)
          .catch(() => {})
      }
      this.subscribedFor = venID
      this.lastError = undefined
    } catch (error) {
      this.lastError = (error as Error).message.slice(0, 300)
      throw error
    }
  }
}

export interface MqttNotifierInit {
  clientId: string
  connectTimeoutMs: number
}

export class MqttNotifier implements VenNotifier {
  private mqtt: MqttClient | undefined
  private broker: string | undefined
  private topic: string | undefined
  private venID: string | undefined
  private connecting: Promise<void> | undefined
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined
  private failures = 0
  private stopped = false
  private received = 0
  private lastError: string | undefined

  constructor(
    private readonly init: MqttNotifierInit,
    private readonly components: VenNotifierComponents,
  ) {}

  async start(): Promise<void> {
    this.stopped = false
  }

  async stop(): Promise<void> {
    this.stopped = true
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer)
    await this.connecting?.catch(() => {})
    const mqtt = this.mqtt
    this.mqtt = undefined
    await mqtt?.endAsync(true).catch(() => {})
  }

  status(): Record<string, unknown> {
    return {
      ...(this.broker ? { broker: this.broker } : {}),
      ...(this.topic ? { topic: this.topic } : {}),
      connected: this.mqtt?.connected === true,
      received: this.received,
      ...(this.lastError ? { lastError: this.lastError } : {}),
    }
  }

  async maintain(venID: string, recheck: boolean, options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.stopped) return
    if (!recheck && this.venID === venID && (this.mqtt?.connected || this.reconnectTimer)) return
    const { client } = this.components
    try {
      const notifiers = await client.call<Body>('listAllNotifiers', {}, options)
      const binding = notifiers.body?.MQTT as Body | undefined
      const uris = Array.isArray(binding?.URIS) ? binding.URIS.filter((uri) => typeof uri === 'string') : []
      const method = (binding?.authentication as Body | undefined)?.method
      if (!binding || uris.length === 0)
        throw new OpenAdrError('openadr-ven', 'the VTN offers no MQTT notifier')
      if (method !== 'OAUTH2_BEARER_TOKEN')
        throw new OpenAdrError('openadr-ven', `MQTT authentication ${String(method)} is not supported`)
      const topics = await client.call<{ topics?: { ALL?: unknown } }>(
        'listAllMqttNotifierTopicsVenEvents',
        { params: { venID } },
        options,
      )
      const topic = topics.body?.topics?.ALL
      if (typeof topic !== 'string') throw new OpenAdrError('openadr-ven', 'the VTN named no MQTT topic')
      const broker = String(uris[0])
      const changed = broker !== this.broker || topic !== this.topic || venID !== this.venID
      this.broker = broker
      this.topic = topic
      this.venID = venID
      if (changed || !this.mqtt?.connected) await this.connect()
      this.lastError = undefined
    } catch (error) {
      this.lastError = (error as Error).message.slice(0, 300)
      throw error
    }
  }

  private connect(): Promise<void> {
    this.connecting ??= this.connectOnce().finally(() => {
      this.connecting = undefined
    })
    return this.connecting
  }

  private async connectOnce(): Promise<void> {
    if (this.stopped || !this.broker || !this.topic) return
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer)
    this.reconnectTimer = undefined
    const previous = this.mqtt
    this.mqtt = undefined
    await previous?.endAsync(true).catch(() => {})
    const { connectAsync } = await import('mqtt')
    const { client, logger } = this.components
    // The VTN ends the connection when the token expires: each login takes a fresh one.
    const token = await client.accessToken(true)
    const mqtt = await connectAsync(this.broker, {
      username: this.init.clientId,
      password: token,
      clientId: this.init.clientId,
      reconnectPeriod: 0,
      connectTimeout: this.init.connectTimeoutMs,
    })
    if (this.stopped) {
      await mqtt.endAsync(true).catch(() => {})
      return
    }
    mqtt.on('message', (_topic, payload) => {
      let parsed: unknown
      try {
        parsed = JSON.parse(payload.toString())
      } catch {
        logger.warn({ topic: _topic }, 'MQTT notification is not JSON: ignored')
        return
      }
      const notification = parseNotification(parsed)
      if (!notification) return
      this.received += 1
      this.components.onNotification(notification)
    })
    mqtt.on('close', () => {
      if (this.mqtt !== mqtt || this.stopped) return
      this.scheduleReconnect()
    })
    const granted = await mqtt.subscribeAsync(this.topic, { qos: 0 })
    if (granted.some((grant) => grant.qos === 128)) {
      await mqtt.endAsync(true).catch(() => {})
      throw new OpenAdrError('openadr-ven', `the MQTT broker refused the subscription to ${this.topic}`)
    }
    this.mqtt = mqtt
    this.failures = 0
    logger.info({ broker: this.broker, topic: this.topic }, 'MQTT notifications subscribed')
  }

  private scheduleReconnect(): void {
    if (this.stopped || this.reconnectTimer) return
    this.failures += 1
    const delay = Math.min(60_000, 500 * 2 ** Math.min(this.failures - 1, 7))
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined
      this.connect().catch((error) => {
        this.lastError = (error as Error).message.slice(0, 300)
        this.components.logger.warn({ err: this.lastError }, 'MQTT notifier: reconnect failed')
        this.scheduleReconnect()
      })
    }, delay)
    this.reconnectTimer.unref?.()
  }
}

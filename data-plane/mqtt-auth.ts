/**
 * The authorization callout service for the embedded nats-server's MQTT listener. The server
 * asks on `$SYS.REQ.USER.AUTH` (one signed request per connecting client that is not the
 * node's own user); this service checks the request's signature, refuses anything that is not
 * an MQTT client, and asks an authorizer (the plugin host) what the client may do. The answer
 * is a user JWT signed with the callout issuer key: the client may subscribe to the topic
 * filters granted (and `$MQTT.sub.>`, which nats-server needs for QoS 1 deliveries), publish
 * nothing, and its connection ends when the grant expires.
 *
 * Nothing here knows a protocol: what a client may see is the authorizer's business.
 */
import { createHash } from 'node:crypto'
import type { NatsConnection, Subscription } from '@nats-io/nats-core'
import { fromPublic, type KeyPair } from '@nats-io/nkeys'
import type { Logger } from './nats-server.ts'

/** What a connecting MQTT client presented. */
export interface MqttConnectRequest {
  username: string
  password: string
  /** The MQTT client identifier. */
  clientId: string
  /** The client's address. */
  host: string
}

/** What a client may do: subscribe to these MQTT topic filters (`a/b/+`, `a/#`) until `expiresAt`. */
export interface MqttGrant {
  subscribe: string[]
  /** Epoch ms; the server closes the connection then. */
  expiresAt?: number
  /** For the server's logs. */
  name?: string
}

export type MqttAuthorizer = (request: MqttConnectRequest) => Promise<MqttGrant | { refused: string }>

export interface MqttAuthCalloutInit {
  /** The key the server trusts as the callout issuer. */
  issuer: KeyPair
  /** Account the clients are placed in (`$G` for a server without accounts). */
  account?: string
}

export interface MqttAuthCalloutComponents {
  connection: NatsConnection
  logger: Logger
}

const CALLOUT_SUBJECT = '$SYS.REQ.USER.AUTH'
/** A topic filter: levels of letters, digits, `_` and `-`, `+` for one level, `#` last. */
const TOPIC_FILTER = /^(?:[A-Za-z0-9_-]+|\+)(?:\/(?:[A-Za-z0-9_-]+|\+))*(?:\/#)?$/
const encoder = new TextEncoder()
const decoder = new TextDecoder()

/**
 * The NATS subjects nats-server subscribes an MQTT topic filter to (`/`→`.`, `+`→`*`, `#`→`>`;
 * `a/#` also matches `a` itself, so it is `a` and `a.>`).
 */
export function mqttFilterToSubjects(filter: string): string[] {
  if (!TOPIC_FILTER.test(filter)) throw new Error(`'${filter}' is not a topic filter this node grants`)
  const subject = filter
    .split('/')
    .map((level) => (level === '+' ? '*' : level === '#' ? '>' : level))
    .join('.')
  return subject.endsWith('.>') ? [subject.slice(0, -2), subject] : [subject]
}

/** An MQTT topic name as its NATS subject; levels are letters, digits, `_` and `-`. */
export function mqttTopicToSubject(topic: string): string {
  if (!/^[A-Za-z0-9_-]+(?:\/[A-Za-z0-9_-]+)*$/.test(topic))
    throw new Error(`'${topic}' is not a topic name this node publishes`)
  return topic.replaceAll('/', '.')
}

const base64url = (bytes: Uint8Array | string) =>
  Buffer.from(typeof bytes === 'string' ? encoder.encode(bytes) : bytes).toString('base64url')

/** A NATS JWT (header `ed25519-nkey`) signed by `key`; `jti` is the hash of the claims. */
export function signNatsJwt(key: KeyPair, claims: Record<string, unknown>): string {
  const header = base64url(JSON.stringify({ typ: 'JWT', alg: 'ed25519-nkey' }))
  const body: Record<string, unknown> = {
    ...claims,
    iat: Math.floor(Date.now() / 1000),
    iss: key.getPublicKey(),
    jti: '',
  }
  body.jti = createHash('sha256').update(JSON.stringify(body)).digest('base64url')
  const signed = `${header}.${base64url(JSON.stringify(body))}`
  return `${signed}.${base64url(key.sign(encoder.encode(signed)))}`
}

/** The claims of a NATS JWT whose signature its issuer's key verifies; undefined otherwise. */
export function verifyNatsJwt(token: string): Record<string, unknown> | undefined {
  const parts = token.split('.')
  if (parts.length !== 3) return undefined
  try {
    const header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8')) as { alg?: string }
    if (header.alg !== 'ed25519-nkey' && header.alg !== 'ed25519') return undefined
    const claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as Record<string, unknown>
    if (typeof claims.iss !== 'string') return undefined
    const valid = fromPublic(claims.iss).verify(
      encoder.encode(`${parts[0]}.${parts[1]}`),
      Buffer.from(parts[2]!, 'base64url'),
    )
    return valid ? claims : undefined
  } catch {
    return undefined
  }
}

interface AuthorizationRequest {
  server_id?: { id?: string }
  user_nkey?: string
  client_info?: { host?: string; type?: string; mqtt_id?: string; kind?: string }
  connect_opts?: { user?: string; pass?: string }
}

export class MqttAuthCallout {
  private subscription: Subscription | undefined
  private authorizer: MqttAuthorizer | undefined
  private loop: Promise<void> | undefined

  constructor(
    private readonly init: MqttAuthCalloutInit,
    private readonly components: MqttAuthCalloutComponents,
  ) {}

  /** Who decides; until set, every MQTT client is refused. */
  setAuthorizer(authorizer: MqttAuthorizer | undefined): void {
    this.authorizer = authorizer
  }

  async start(): Promise<void> {
    if (this.subscription) return
    const subscription = this.components.connection.subscribe(CALLOUT_SUBJECT)
    this.subscription = subscription
    this.loop = (async () => {
      for await (const message of subscription) {
        if (!message.reply) continue
        const answer = await this.answer(decoder.decode(message.data)).catch((error: Error) => {
          this.components.logger.warn({ err: error.message }, 'mqtt authorization failed')
          return undefined
        })
        if (answer) message.respond(encoder.encode(answer))
      }
    })()
    await this.components.connection.flush()
  }

  async stop(): Promise<void> {
    this.subscription?.unsubscribe()
    this.subscription = undefined
    await this.loop?.catch(() => {})
  }

  /** The signed authorization response to one request (undefined: not from our server, no answer). */
  private async answer(token: string): Promise<string | undefined> {
    const claims = verifyNatsJwt(token)
    const request = claims?.nats as AuthorizationRequest | undefined
    const serverId = request?.server_id?.id
    const userKey = request?.user_nkey
    // Only the server signs requests, with the key its id names.
    if (!claims || !request || !serverId || serverId !== claims.iss || !userKey) {
      this.components.logger.warn({}, 'mqtt authorization request not signed by the server: ignored')
      return undefined
    }
    const respond = (nats: Record<string, unknown>) =>
      signNatsJwt(this.init.issuer, {
        aud: serverId,
        sub: userKey,
        nats: { ...nats, type: 'authorization_response', version: 2 },
      })
    const refuse = (reason: string) => {
      this.components.logger.info(
        { user: request.connect_opts?.user, host: request.client_info?.host, reason },
        'mqtt client refused',
      )
      return respond({ error: reason })
    }
    if (request.client_info?.type !== 'mqtt') return refuse('only MQTT clients are authorized here')
    const authorizer = this.authorizer
    if (!authorizer) return refuse('no MQTT service is running')
    const decision = await authorizer({
      username: request.connect_opts?.user ?? '',
      password: request.connect_opts?.pass ?? '',
      clientId: request.client_info.mqtt_id ?? '',
      host: request.client_info.host ?? '',
    })
    if ('refused' in decision) return refuse(decision.refused)
    if (decision.subscribe.length === 0) return refuse('nothing to subscribe to')
    if (decision.expiresAt !== undefined && decision.expiresAt <= Date.now())
      return refuse('the credentials have expired')
    const allow = [...new Set(decision.subscribe.flatMap(mqttFilterToSubjects)), '$MQTT.sub.>']
    const user = signNatsJwt(this.init.issuer, {
      aud: this.init.account ?? '$G',
      sub: userKey,
      name: decision.name ?? request.connect_opts?.user ?? 'mqtt',
      ...(decision.expiresAt !== undefined ? { exp: Math.floor(decision.expiresAt / 1000) } : {}),
      nats: {
        pub: { deny: ['>'] },
        sub: { allow },
        subs: -1,
        data: -1,
        payload: -1,
        type: 'user',
        version: 2,
      },
    })
    this.components.logger.info(
      { user: request.connect_opts?.user, host: request.client_info.host, topics: decision.subscribe.length },
      'mqtt client authorized',
    )
    return respond({ jwt: user })
  }
}

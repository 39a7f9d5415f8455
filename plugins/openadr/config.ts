/**
 * The `[plugins.openadr-vtn]` and `[plugins.openadr-ven]` configuration slices
 * (ARCHITECTURE §8).
 */
import * as z from 'zod'
import { isResourceId, isResourceKind, RESOURCE_KINDS, type ResourceKind } from '../../data-plane/index.ts'
import { durationSeconds, parseDurationSeconds, parseListen } from '../config-helpers.ts'
import { OPENADR_VERSIONS } from './contract.ts'

export { parseDurationSeconds, parseListen }

/** Default VTN listener: loopback (a VTN is put behind a TLS proxy to face the Internet). */
export const DEFAULT_VTN_LISTEN = '127.0.0.1:8081'
export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024
/** Base path of each version on the VTN's one listener. */
export const BASE_PATHS = { '3.1.0': '/openadr3/3.1.0', '3.0.1': '/openadr3/3.0.1' } as const

const duration = (what: string, min: number, max: number) => durationSeconds(what, min, max, '10 or "10s"')

/** OAuth client ids: what the token endpoint accepts and what objects carry as clientID. */
export const CLIENT_ID_PATTERN = /^[A-Za-z0-9._~-]{1,128}$/

export const vtnClientSchema = z.strictObject({
  secret: z.string().min(8, 'must be at least 8 characters').max(4096),
  role: z.enum(['ven', 'bl']),
})

const resourceKind = z
  .string()
  .refine(isResourceKind, `must be one of ${RESOURCE_KINDS.join(', ')}`)
  .transform((kind) => kind as ResourceKind)

export const vtnConfigSchema = z
  .strictObject({
    listen: z
      .string()
      .default(DEFAULT_VTN_LISTEN)
      .refine((value) => parseListen(value) !== undefined, 'must be "HOST:PORT" (e.g. "127.0.0.1:8081")'),
    clients: z
      .record(
        z.string().regex(CLIENT_ID_PATTERN, 'a client id is letters, digits, . _ ~ - (at most 128)'),
        vtnClientSchema,
      )
      .default({}),
    /** Bearer tokens live this long. */
    token_lifetime: duration('token_lifetime', 1, 7 * 86_400).default(3600),
    /** Larger request bodies are refused with 413. */
    max_body_bytes: z
      .number()
      .int()
      .min(1024)
      .max(64 * 1024 * 1024)
      .default(DEFAULT_MAX_BODY_BYTES),
    /** The kind VEN resources get on the data plane. */
    resource_kind: resourceKind.default('der'),
    /** Name of the program the node's own control events (limit_power) belong to. */
    control_program: z.string().min(1).max(128).default('oe-node-control'),
    /** Reports kept (the oldest are dropped beyond this; their telemetry is on the data plane). */
    max_reports: z.number().int().min(100).max(10_000_000).default(50_000),
    /** Webhook deliveries: attempts (with back-off 1 s, 2 s, 4 s, … up to 60 s) and time per attempt. */
    webhook_attempts: z.number().int().min(1).max(20).default(6),
    webhook_timeout: duration('webhook_timeout', 0.1, 60).default(5),
    /**
     * The MQTT notifier binding (3.1.0): nats-server's MQTT listener on this address, on the
     * node's own data plane. Off when unset.
     */
    mqtt_listen: z
      .string()
      .refine((value) => parseListen(value) !== undefined, 'must be "HOST:PORT" (e.g. "127.0.0.1:1883")')
      .optional(),
    /** PEM certificate (chain) and key for MQTT over TLS (`mqtts://`); both or neither. */
    mqtt_tls_cert: z.string().min(1).optional(),
    mqtt_tls_key: z.string().min(1).optional(),
  })
  .refine((config) => (config.mqtt_tls_cert === undefined) === (config.mqtt_tls_key === undefined), {
    message: 'mqtt_tls_cert and mqtt_tls_key go together',
    path: ['mqtt_tls_key'],
  })

export type VtnConfig = z.output<typeof vtnConfigSchema>

/** `<kind>.<rid>` of a node resource. */
const nodeResource = z.string().refine((value) => {
  const dot = value.indexOf('.')
  return dot > 0 && isResourceKind(value.slice(0, dot)) && isResourceId(value.slice(dot + 1))
}, 'must be "<kind>.<rid>" of a node resource (e.g. "battery.site1-bat")')

/** How the VEN hears of new and changed events. */
export const VEN_NOTIFICATIONS = ['poll', 'webhook', 'mqtt'] as const
/** Poll interval when none is set: often when polling is all there is, rarely as a safety net. */
export const DEFAULT_POLL_INTERVAL = { poll: 10, webhook: 300, mqtt: 300 } as const

export const venConfigSchema = z
  .strictObject({
    /** Base URL of the VTN's API (where `/programs` is), e.g. `https://vtn.example/openadr3/3.1.0`. */
    vtn_url: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }),
    client_id: z.string().min(1).max(4096),
    client_secret: z.string().min(1).max(4096),
    ven_name: z.string().min(1).max(128),
    version: z.enum(OPENADR_VERSIONS).default('3.1.0'),
    /** Token endpoint; default: the VTN's `auth/server` answer (3.1.0), else `<vtn_url>/auth/token`. */
    token_url: z.url({ protocol: /^https?$/ }).optional(),
    /**
     * How often events are polled (a VTN's Retry-After stretches it); default 10 s, or 300 s when
     * notifications make polling a safety net.
     */
    poll_interval: duration('poll_interval', 0.2, 3600).optional(),
    /**
     * `poll` only; `webhook`: the VTN calls `webhook_url` (served on `webhook_listen`); `mqtt`
     * (3.1.0): the VTN's MQTT notifier. Events notified are acted on at once.
     */
    notifications: z.enum(VEN_NOTIFICATIONS).default('poll'),
    /** Where the webhook callback is served. */
    webhook_listen: z
      .string()
      .refine((value) => parseListen(value) !== undefined, 'must be "HOST:PORT" (e.g. "127.0.0.1:8082")')
      .optional(),
    /** The callback URL given to the VTN; default `http://<webhook_listen>/openadr/notifications`. */
    webhook_url: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }).optional(),
    /** VTN resource name → node resource `<kind>.<rid>`: registered with the VTN, controlled, reported. */
    resources: z.record(z.string().min(1).max(128), nodeResource).default({}),
    /** Time per request to the VTN. */
    request_timeout: duration('request_timeout', 0.5, 120).default(10),
  })
  .refine((config) => config.notifications !== 'webhook' || config.webhook_listen !== undefined, {
    message: 'notifications = "webhook" needs webhook_listen',
    path: ['webhook_listen'],
  })
  .refine(
    (config) => {
      if (config.notifications !== 'webhook' || config.webhook_url || !config.webhook_listen) return true
      const host = parseListen(config.webhook_listen)?.host
      return host !== '0.0.0.0' && host !== '::' && host !== '[::]'
    },
    {
      message: 'webhook_listen on every address: set webhook_url to the URL the VTN reaches this node by',
      path: ['webhook_url'],
    },
  )
  .refine((config) => config.notifications !== 'mqtt' || config.version === '3.1.0', {
    message: 'notifications = "mqtt" needs version "3.1.0" (3.0.1 has no MQTT notifier)',
    path: ['notifications'],
  })

export type VenConfig = z.output<typeof venConfigSchema>

export function splitNodeResource(value: string): { kind: ResourceKind; rid: string } {
  const dot = value.indexOf('.')
  return { kind: value.slice(0, dot) as ResourceKind, rid: value.slice(dot + 1) }
}

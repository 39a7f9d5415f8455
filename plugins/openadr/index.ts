/**
 * The OpenADR 3 plugins.
 *
 * `openadr-vtn` is a VTN (server) for any VEN: OpenADR 3.1.0 under `/openadr3/3.1.0` and 3.0.1
 * under `/openadr3/3.0.1` on one listener, OAuth2 client credentials at `<base>/auth/token`
 * (form or HTTP Basic), programs, events, reports, subscriptions (webhooks with retries), vens
 * and resources with each version's query parameters and the per-role visibility rules, every
 * answer validated against the official OpenAPI document of its version, state in JetStream KV.
 * With `mqtt_listen` it also serves the 3.1.0 MQTT notifier binding from the node's own
 * nats-server (clients log in with their bearer token; a VEN may only subscribe to its own
 * topics). Its status lists the VENs (resources, last seen, active events, last report) and
 * the events in force; the VEN's, its link to the VTN and the events it follows.
 * VEN resources become standing data, reports become telemetry, and `limit_power` on a VEN
 * resource becomes an IMPORT_CAPACITY_LIMIT event for that VEN (its reading and reporting show
 * as `control_result` events). Every replica of the node may serve it on the one bucket (behind a
 * TCP load balancer): each follows every change to the bucket as it is made (a KV watch), two
 * changes of one object never overwrite each other (compare-and-set on the KV revision: the loser
 * is redone on the newest version, or refused with 409), a unique name goes to one object, and a
 * webhook goes out once, from the replica that made the change.
 *
 * `openadr-ven` is a VEN (client) that follows any VTN: it registers itself and its resources,
 * polls events, turns capacity limits into `limit_power` commands and prices and levels into
 * events at the right time, and sends the reports the events ask for from the node's telemetry.
 * With `notifications = "webhook"` or `"mqtt"` (3.1.0) the VTN tells it of events, which it acts
 * on at once; polling goes on, every 300 s by default, as a safety net. Its registration, the
 * events, what it acted on, the reports it sent and its webhook token are kept in its store, so a
 * restart loses nothing. With several replicas of the node, one of them at a time follows the
 * VTN (lease `plugin.openadr-ven.ven`); the others stand by and one takes over within the lease
 * term when it goes, resuming from the store (nothing commanded or reported twice).
 *
 * Modules: config.ts (both slices), contract.ts (the OpenAPI documents, ajv), codec.ts + v310.ts
 * + v301.ts (version codecs), model.ts (the VTN's object form), visibility.ts (who sees what),
 * timing.ts (intervals), normalise.ts (ids, units, reports ↔ telemetry, limits ↔ events),
 * state.ts (KV), auth.ts (OAuth tokens), webhooks.ts (notifications), mqtt.ts (the MQTT
 * notifier binding: topics, served by the node's nats-server), server.ts (VTN transport),
 * vtn.ts (VTN glue), client.ts (VEN transport), ven-notifications.ts (VEN webhook and MQTT
 * notifications), ven.ts (VEN glue).
 *
 * @example
 * # config.toml
 * [plugins.openadr-vtn]
 * enabled = true
 * listen = "127.0.0.1:8081"
 * mqtt_listen = "127.0.0.1:1883"   # optional: the 3.1.0 MQTT notifier, on the node's nats-server
 * [plugins.openadr-vtn.clients.bl-1]
 * secret = "a long random secret"
 * role = "bl"
 * [plugins.openadr-vtn.clients.ven-1]
 * secret = "another long secret"
 * role = "ven"
 *
 * [plugins.openadr-ven]
 * enabled = true
 * vtn_url = "https://vtn.example.com/openadr3/3.1.0"
 * client_id = "ven-1"
 * client_secret = "another long secret"
 * ven_name = "site-7"
 * version = "3.1.0"
 * notifications = "webhook"          # or "mqtt", or "poll" (the default)
 * webhook_listen = "127.0.0.1:8082"  # the VTN calls http://127.0.0.1:8082/openadr/notifications
 * [plugins.openadr-ven.resources]
 * "battery-1" = "battery.site7-bat"
 */
import { randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { definePlugin } from '../api.ts'
import { parseListen, venConfigSchema, vtnConfigSchema } from './config.ts'
import { createMemoryStore } from './state.ts'
import { Ven } from './ven.ts'
import { Vtn } from './vtn.ts'

export {
  BASE_PATHS,
  DEFAULT_VTN_LISTEN,
  type VenConfig,
  type VtnConfig,
  venConfigSchema,
  vtnConfigSchema,
} from './config.ts'
export { contractFor, OPENADR_VERSIONS, type OpenAdrVersion } from './contract.ts'
export * from './errors.ts'
export { resourceIdFor } from './normalise.ts'

export const openadrVtnPlugin = definePlugin({
  id: 'openadr-vtn',
  version: '0.1.0',
  description: 'OpenADR 3.1.0 and 3.0.1 VTN (server) for VENs, with OAuth2, webhooks and KV state',
  configSchema: vtnConfigSchema,
  needs: (config) =>
    config.mqtt_listen
      ? {
          mqtt: {
            listen: config.mqtt_listen,
            ...(config.mqtt_tls_cert && config.mqtt_tls_key
              ? { tls: { cert: config.mqtt_tls_cert, key: config.mqtt_tls_key } }
              : {}),
          },
        }
      : {},
  create: async (ctx) => {
    const { host, port } = parseListen(ctx.config.listen)!
    const open = async (name: string) => {
      if (ctx.store) return ctx.store(name)
      ctx.logger.warn({ store: name }, 'no data-plane store: state is kept in memory only')
      return createMemoryStore(name)
    }
    const vtn = new Vtn(
      { config: ctx.config, host, port },
      {
        dataPlane: ctx.dataPlane,
        logger: ctx.logger,
        metrics: ctx.metrics,
        objects: await open('objects'),
        tokens: await open('tokens'),
      },
    )
    ctx.signal.addEventListener('abort', () => void vtn.stop(), { once: true })
    return {
      start: (options) => vtn.start(options),
      stop: () => vtn.stop(),
      ready: () => vtn.ready(),
      status: () => vtn.status(),
    }
  },
})

export const openadrVenPlugin = definePlugin({
  id: 'openadr-ven',
  version: '0.1.0',
  description: 'OpenADR 3.1.0 and 3.0.1 VEN (client) that follows a VTN: limits, prices, reports',
  configSchema: venConfigSchema,
  create: async (ctx) => {
    const ven = new Ven(
      { config: ctx.config, replica: await replicaMark(ctx.dataDir) },
      {
        dataPlane: ctx.dataPlane,
        logger: ctx.logger,
        metrics: ctx.metrics,
        store: ctx.store ? await ctx.store('state') : createMemoryStore('state'),
        ...(ctx.lease ? { lease: ctx.lease.bind(ctx) } : {}),
      },
    )
    ctx.signal.addEventListener('abort', () => void ven.stop(), { once: true })
    return {
      start: (options) => ven.start(options),
      stop: () => ven.stop(),
      ready: () => ven.ready(),
      status: () => ven.status(),
    }
  },
})

/** This replica's mark, kept in its own data folder (a restart finds it again, another replica has its own). */
async function replicaMark(dataDir: string): Promise<string> {
  const file = join(dataDir, 'replica')
  const kept = (await readFile(file, 'utf8').catch(() => '')).trim()
  if (/^[a-f0-9]{16}$/.test(kept)) return kept
  const mark = randomBytes(8).toString('hex')
  await writeFile(file, `${mark}\n`, { mode: 0o600 })
  return mark
}

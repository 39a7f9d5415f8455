/**
 * The `ocpi` plugin: OCPI 2.2.1 for charge point operators and e-mobility service providers,
 * so that CPOs and eMSPs roam through oe-node. One HTTP listener (default `127.0.0.1:8082`,
 * behind a TLS proxy at `public_url`) serves the versions and credentials modules and, per
 * role, the functional modules; registration runs both ways (`oe-node ocpi token create` issues
 * a token A for a partner to register with us, `oe-node ocpi register <versions-url> --token A`
 * registers us with a partner). State (partners, token hashes, objects, pull progress) is in
 * JetStream KV.
 *
 * As a CPO (`roles = ["cpo"]`) it publishes the node's own stations and EVSEs (standing data,
 * e.g. from the OCPP plugin) as Locations with live status, OCPP transactions as Sessions and
 * CDRs, tariffs from the config, and turns commands and charging profiles into control
 * commands on the data plane. As an eMSP (`roles = ["emsp"]`) it takes CPOs' locations,
 * sessions, CDRs and tariffs into standing data, telemetry and events, issues driver tokens,
 * and sends commands and charging profiles from `oe.ctl.evse.<rid>.…`.
 *
 * Modules: config.ts (the `[plugins.ocpi]` slice), server.ts and client.ts (transport: envelope,
 * status codes, tokens, headers, pagination), v221.ts (the 2.2.1 codec: strict out, lenient
 * in), normalise.ts (OCPI ↔ §5), state.ts (KV), ocpi.ts (glue: versions, credentials,
 * registration, actions), cpo.ts and emsp.ts (the two roles).
 *
 * @example
 * # config.toml
 * [plugins.ocpi]
 * enabled = true
 * listen = "127.0.0.1:8082"
 * public_url = "https://ocpi.example.com/ocpi/versions"
 * country_code = "NL"
 * party_id = "OEN"
 * roles = ["cpo"]
 * [plugins.ocpi.location]          # for stations whose standing data has no address
 * address = "Stationsplein 1"
 * city = "Utrecht"
 * country = "NLD"
 * latitude = "52.089444"
 * longitude = "5.110278"
 * time_zone = "Europe/Amsterdam"
 * [[plugins.ocpi.tariffs]]
 * id = "standard"
 * currency = "EUR"
 * elements = [{ price_components = [{ type = "ENERGY", price = 0.35, vat = 21.0, step_size = 1 }] }]
 */
import { definePlugin } from '../api.ts'
import { ocpiConfigSchema, parseListen } from './config.ts'
import { OcpiNode } from './ocpi.ts'
import { createMemoryStore } from './state.ts'

export { OcpiClient } from './client.ts'
export { DEFAULT_LISTEN, type OcpiConfig, ocpiConfigSchema } from './config.ts'
export * from './errors.ts'
export { envelope, tokenCandidates } from './server.ts'
export { formatDateTime, OCPI_VERSION, ocpi221, parseDateTime } from './v221.ts'

export const ocpiPlugin = definePlugin({
  id: 'ocpi',
  version: '0.1.0',
  description: 'OCPI 2.2.1 for charge point operators and e-mobility service providers (CPO and eMSP roles)',
  configSchema: ocpiConfigSchema,
  create: async (ctx) => {
    const { host, port } = parseListen(ctx.config.listen)!
    const stores = {
      partners: ctx.store ? await ctx.store('partners') : createMemoryStore('partners'),
      objects: ctx.store ? await ctx.store('objects') : createMemoryStore('objects'),
    }
    const node = new OcpiNode(
      { config: ctx.config, host, port },
      { dataPlane: ctx.dataPlane, logger: ctx.logger, metrics: ctx.metrics, stores },
    )
    ctx.signal.addEventListener('abort', () => void node.stop(), { once: true })
    return {
      start: (options) => node.start(options),
      stop: () => node.stop(),
      ready: () => node.ready(),
      status: () => node.status(),
      actions: node.actions(),
    }
  },
})

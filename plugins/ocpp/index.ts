/**
 * The `ocpp` plugin: a CSMS (central system) for charging stations speaking OCPP 1.6-J or
 * OCPP 2.0.1 over WebSocket at `ws(s)://<listen>/ocpp/<stationId>`. Stations authenticate with
 * HTTP Basic (Security Profile 1, or 2 with `tls_cert`/`tls_key`); their boot data, connector
 * status, sessions and meter values become canonical resources, events and telemetry
 * (ARCHITECTURE §5); `limit_power` control commands become SetChargingProfile.
 *
 * Modules: config.ts (the `[plugins.ocpp]` slice), server.ts (transport: listener, upgrade
 * checks, ocpp-rpc in strict mode), validators.ts (official JSON schemas), v16.ts / v201.ts
 * (version codecs), normalise.ts (sampled values → records), state.ts (sessions, limits),
 * csms.ts (the glue, control and actions).
 *
 * @example
 * # config.toml
 * [plugins.ocpp]
 * enabled = true
 * listen = "0.0.0.0:9220"
 * [plugins.ocpp.stations.CS1]
 * password = "a long random secret"
 */
import { definePlugin } from '../api.ts'
import { ocppConfigSchema, parseListen } from './config.ts'
import { OcppCsms } from './csms.ts'

export { DEFAULT_LISTEN, type OcppConfig, ocppConfigSchema } from './config.ts'
export { parseEvseId } from './csms.ts'
export * from './errors.ts'
export { normaliseMeterValues, normaliseSample } from './normalise.ts'

export const ocppPlugin = definePlugin({
  id: 'ocpp',
  version: '0.1.0',
  description: 'OCPP 1.6-J and 2.0.1 central system (CSMS) for charging stations',
  configSchema: ocppConfigSchema,
  create: (ctx) => {
    const { host, port } = parseListen(ctx.config.listen)!
    const csms = new OcppCsms(
      { config: ctx.config, dataDir: ctx.dataDir, host, port },
      { dataPlane: ctx.dataPlane, logger: ctx.logger, metrics: ctx.metrics },
    )
    // The host aborts the signal before stop(): close the listener at once either way.
    ctx.signal.addEventListener('abort', () => void csms.stop(), { once: true })
    return {
      start: (options) => csms.start(options),
      stop: () => csms.stop(),
      ready: () => csms.ready(),
      status: () => csms.status(),
      actions: csms.actions(),
    }
  },
})

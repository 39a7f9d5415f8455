/**
 * The `ocpp` plugin: a CSMS (central system) for charging stations speaking OCPP 1.6-J or
 * OCPP 2.0.1 over WebSocket at `ws(s)://<listen>/ocpp/<stationId>`. Stations authenticate with
 * HTTP Basic (Security Profile 1, or 2 with `tls_cert`/`tls_key`); their boot data, connector
 * status, sessions and meter values become canonical resources, events and telemetry
 * (ARCHITECTURE §5); `limit_power` control commands become SetChargingProfile, and the EVSE
 * commands `start_session`, `stop_session`, `unlock_connector`, `reserve_now`,
 * `cancel_reservation` (e.g. from OCPI eMSPs) become their OCPP calls, each answered by a
 * `limit_result` / `control_result` event. Drivers' tokens are checked with the node's token
 * authorisation. Several replicas may share one data plane: state lives in JetStream KV and a
 * command reaches the replica that holds the station's socket. Security Profile 3: with
 * `tls_ca`, stations present client certificates (CN = station id), and with `signing_ca_cert`
 * / `signing_ca_key` 2.0.1 stations get their CSRs signed (SignCertificate → CertificateSigned).
 *
 * Modules: config.ts (the `[plugins.ocpp]` slice), server.ts (transport: listener, upgrade
 * checks, ocpp-rpc in strict mode), validators.ts (official JSON schemas), v16.ts / v201.ts
 * (version codecs), normalise.ts (sampled values → records), state.ts (sessions, limits, in
 * KV), commands.ts (EVSE commands → calls), routing.ts (commands across replicas), x509.ts
 * (CSR signing), csms.ts (the glue, control and actions).
 *
 * @example
 * # config.toml
 * [plugins.ocpp]
 * enabled = true
 * listen = "0.0.0.0:9220"
 * [plugins.ocpp.stations.CS1]
 * password = "a long random secret"
 *
 * # Security Profile 3 (optional)
 * # tls_cert = "/etc/oe-node/ocpp.pem"
 * # tls_key = "/etc/oe-node/ocpp.key"
 * # tls_ca = "/etc/oe-node/station-ca.pem"
 * # signing_ca_cert = "/etc/oe-node/station-ca.pem"
 * # signing_ca_key = "/etc/oe-node/station-ca.key"
 */
import { definePlugin } from '../api.ts'
import { ocppConfigSchema, parseListen } from './config.ts'
import { OcppCsms } from './csms.ts'
import { replicaId } from './routing.ts'
import { createMemoryStateStore } from './state.ts'

export { DEFAULT_LISTEN, type OcppConfig, ocppConfigSchema } from './config.ts'
export { parseEvseId } from './csms.ts'
export * from './errors.ts'
export { normaliseMeterValues, normaliseSample } from './normalise.ts'

export const ocppPlugin = definePlugin({
  id: 'ocpp',
  version: '0.1.0',
  description: 'OCPP 1.6-J and 2.0.1 central system (CSMS) for charging stations',
  configSchema: ocppConfigSchema,
  create: async (ctx) => {
    const { host, port } = parseListen(ctx.config.listen)!
    const store = ctx.store ? await ctx.store('state') : createMemoryStateStore()
    const csms = new OcppCsms(
      { config: ctx.config, dataDir: ctx.dataDir, host, port, replica: await replicaId(ctx.dataDir) },
      { dataPlane: ctx.dataPlane, logger: ctx.logger, metrics: ctx.metrics, store },
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

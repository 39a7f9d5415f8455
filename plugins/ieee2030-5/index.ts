/**
 * The `csip-aus` plugin: an IEEE 2030.5 client speaking CSIP-AUS (v1.2 and v1.3), which puts the
 * node's sites under a utility's dynamic operating envelopes. Over mutual TLS it discovers the
 * server (DeviceCapability, Time), registers each site's EndDevice (device mode: the certificate
 * is the device; aggregator mode: each site's configured LFDI) with its ConnectionPoint (NMI) and
 * DER capability, settings, status and availability; it polls FunctionSetAssignments →
 * DERPrograms → DefaultDERControl and DERControls, schedules them (primacy, supersession,
 * cancellation, randomisation, server time), publishes what is in force as site control commands
 * (`limit_export`, `limit_import`, `limit_generation`, `limit_load`, `connect`), posts a response
 * for every event, and mirrors the site's telemetry to MirrorUsagePoints. With several replicas of
 * the node, one of them does all that (plugin lease `plugin.csip-aus.client`); the others stand by
 * (`status().role`) and take over from the shared KV state within a lease term.
 *
 * Modules: config.ts (the slice), identity.ts (LFDI/SFDI), client.ts (transport: mutual TLS),
 * codec.ts (XML in/out for both versions), sep.ts (2030.5 resources), normalise.ts (modes →
 * commands, telemetry → readings), scheduler.ts (event rules), state.ts (KV), csip-client.ts
 * (the glue).
 *
 * @example
 * # config.toml
 * [plugins.csip-aus]
 * enabled = true
 * server = "https://utility.example/sep2/dcap"
 * cert = "/etc/oe-node/csip/client.pem"
 * key = "/etc/oe-node/csip/client.key"
 * ca = "/etc/oe-node/csip/serca.pem"
 * mode = "aggregator"
 * [plugins.csip-aus.sites.site-1]
 * nmi = "4103000000"
 * lfdi = "3E4F45AB31EDFE5B67E343E5E4562E3100000001"
 * meter = "meter.site-1-meter"
 * ders = ["pv.site-1-pv", "battery.site-1-bat"]
 */
import { definePlugin, type PluginContext, type PluginInstance } from '../api.ts'
import { type CsipConfig, csipConfigSchema } from './config.ts'
import { CsipClient, type CsipDataPlaneExtras } from './csip-client.ts'
import { type KeyValueStore, memoryStore } from './state.ts'

export { CIPHERS, CsipTransport } from './client.ts'
export * from './codec.ts'
export { type CsipConfig, csipConfigDocs, csipConfigSchema, parseResourceRef } from './config.ts'
export { CsipClient, type CsipDataPlaneExtras } from './csip-client.ts'
export * from './errors.ts'
export { checkDigit, lfdiFromCertificate, pinWithCheckDigit, sfdiFromLfdi } from './identity.ts'
export { controlsFor, MODE_COMMANDS, SITE_COMMANDS } from './normalise.ts'
export { ControlSchedule, MODES, randomOffset } from './scheduler.ts'
export * from './sep.ts'

export interface CsipPluginOptions {
  /** Data-plane capabilities the host's facade does not have yet (tests and embedders supply them). */
  extras?: (ctx: PluginContext<CsipConfig>) => CsipDataPlaneExtras
}

/** The plugin, optionally with extra data-plane capabilities. */
export function createCsipPlugin(options: CsipPluginOptions = {}) {
  return definePlugin({
    id: 'csip-aus',
    version: '0.1.0',
    description:
      'IEEE 2030.5 / CSIP-AUS client: utility dynamic operating envelopes as site control commands',
    configSchema: csipConfigSchema,
    create: async (ctx): Promise<PluginInstance> => {
      // The host's KV facade; a host without one (older harnesses) gets memory that lasts one run.
      const store: KeyValueStore = typeof ctx.store === 'function' ? await ctx.store('state') : memoryStore()
      const client = new CsipClient(ctx.config, {
        dataPlane: Object.assign(Object.create(ctx.dataPlane), ctx.dataPlane, options.extras?.(ctx) ?? {}),
        logger: ctx.logger,
        metrics: ctx.metrics,
        signal: ctx.signal,
        store,
        // Replicas of one node: the client's work runs on the replica holding lease `client`.
        ...(typeof ctx.lease === 'function' ? { lease: ctx.lease.bind(ctx) } : {}),
      })
      return {
        start: (startOptions) => client.start(startOptions),
        stop: () => client.stop(),
        ready: () => client.ready(),
        status: () => client.status(),
        actions: client.operatorActions(),
      }
    },
  })
}

export const csipAusPlugin = createCsipPlugin()

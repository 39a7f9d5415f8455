/**
 * simulator: a synthetic DER fleet for demos and benchmarks. Each site `site-<n>` has a grid
 * meter (`<site>-meter`), PV (`<site>-pv`), a battery (`<site>-bat`) and EVSEs
 * (`<site>-evse-<k>`), published as standing data at start and as telemetry every interval, with
 * daily shapes and (seeded) noise. EVSEs and batteries obey `limit_power`; sites obey
 * `limit_export`, `limit_import`, `limit_generation`, `limit_load` and `connect` at the connection
 * point (PV and battery discharge curtailed, EV and battery charging reduced, DER off when
 * disconnected).
 *
 * @example
 * # config.toml
 * [plugins.simulator]
 * enabled = true
 * sites = 100
 * interval = "1s"
 * seed = 42
 */
import { definePlugin } from '../api.ts'
import { simulatorConfigSchema } from './config.ts'
import { FleetSimulator } from './simulator.ts'

export { type SimulatorConfig, simulatorConfigSchema } from './config.ts'

export const simulatorPlugin = definePlugin({
  id: 'simulator',
  version: '1.0.0',
  description: 'Synthetic DER fleet (meters, PV, batteries, EVSEs) with daily shapes; obeys limit_power',
  configSchema: simulatorConfigSchema,
  create: (ctx) =>
    new FleetSimulator(ctx.config, {
      dataPlane: ctx.dataPlane,
      logger: ctx.logger,
      metrics: ctx.metrics,
      signal: ctx.signal,
    }),
})

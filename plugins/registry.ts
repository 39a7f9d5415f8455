/** The plugins built into the binary. A plugin is enabled with `[plugins.<id>] enabled = true`. */
import type { PluginDefinition } from './api.ts'
import { csipAusPlugin } from './ieee2030-5/index.ts'
import { ocpiPlugin } from './ocpi/index.ts'
import { ocppPlugin } from './ocpp/index.ts'
import { openadrVenPlugin, openadrVtnPlugin } from './openadr/index.ts'
import { simulatorPlugin } from './simulator/index.ts'

export const builtinPlugins: readonly PluginDefinition[] = [
  ocppPlugin,
  simulatorPlugin,
  openadrVtnPlugin,
  openadrVenPlugin,
  ocpiPlugin,
  csipAusPlugin,
]

/**
 * plugins: the plugin API (`plugins/api.ts`), the host that runs enabled plugins, the registry
 * of built-in plugins, and one folder per protocol plugin (ARCHITECTURE §8). Plugins import only
 * `data-plane/`, never `federation/` or each other.
 *
 * @example
 * const host = new PluginHost({ config: config.plugins, dir: paths.plugins }, { dataPlane, logger, registry, definitions: builtinPlugins })
 * await host.start()
 */
export * from './api.ts'
export * from './errors.ts'
export {
  PluginHost,
  type PluginHostComponents,
  type PluginHostInit,
  type PluginHostMqtt,
  type PluginStatus,
  validatePluginConfig,
} from './host.ts'
export { builtinPlugins } from './registry.ts'

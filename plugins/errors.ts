/** Errors of plugins and the plugin host. Every misuse names the plugin. */

export class PluginError extends Error {
  override name = 'PluginError'
  constructor(
    readonly pluginId: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(`plugin ${pluginId}: ${message}`, options)
  }
}

/** A plugin's configuration slice does not fit its schema. */
export class PluginConfigError extends PluginError {
  override name = 'PluginConfigError'
  constructor(
    pluginId: string,
    readonly issues: { path: string; message: string }[],
  ) {
    super(
      pluginId,
      `invalid configuration: ${issues.map((issue) => `${issue.path}: ${issue.message}`).join('; ')}`,
    )
  }
}

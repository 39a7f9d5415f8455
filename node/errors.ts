/** Errors of the composition root. The CLI maps them to exit codes, the API to statuses. */

export class NodeError extends Error {
  override name = 'NodeError'
}

export interface ConfigIssue {
  /** Dotted key path (`api.listen`), prefixed by where it came from when not the file. */
  path: string
  message: string
}

/** The merged configuration is invalid; every issue is listed with its key path. Exit 78. */
export class ConfigError extends NodeError {
  override name = 'ConfigError'
  constructor(
    readonly issues: ConfigIssue[],
    readonly source?: string,
  ) {
    super(
      `invalid configuration${source ? ` (${source})` : ''}:\n${issues.map((issue) => `  ${issue.path}: ${issue.message}`).join('\n')}`,
    )
  }
}

/** The identity key is readable by group or others, or otherwise unusable. */
export class KeyPermissionError extends NodeError {
  override name = 'KeyPermissionError'
}

export class KeyFormatError extends NodeError {
  override name = 'KeyFormatError'
}

/** Another node holds the data dir. */
export class DataDirLockedError extends NodeError {
  override name = 'DataDirLockedError'
  constructor(
    readonly dataDir: string,
    readonly pid: number,
  ) {
    super(`data dir ${dataDir} is in use by another oe-node (pid ${pid}); stop it or use another --data-dir`)
  }
}

/** No node is running for this data dir (no `api` file, or nobody answers). */
export class NodeNotRunningError extends NodeError {
  override name = 'NodeNotRunningError'
}

/** The node's API answered with an error. */
export class ApiError extends NodeError {
  override name = 'ApiError'
  constructor(
    readonly status: number,
    readonly errorName: string,
    message: string,
  ) {
    super(message)
  }
}

/** A card could not be parsed or its signature does not hold. */
export class CardError extends NodeError {
  override name = 'CardError'
}

/** A key rotation cannot be done now (the node is not running, or another one is under way). */
export class KeyRotationError extends NodeError {
  override name = 'KeyRotationError'
}

/**
 * The key in `keys/node.key` was retired by a key rotation (on another replica of this node):
 * the replica must be given the new key before it starts.
 */
export class KeyRetiredError extends NodeError {
  override name = 'KeyRetiredError'
}

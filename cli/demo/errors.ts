/** Errors of `oe-node demo`. The command turns them into exit code 1 with their message. */

export class DemoError extends Error {
  override name = 'DemoError'
}

/** One of the three organisations' nodes did not come up (its log tail is in the message). */
export class DemoNodeStartError extends DemoError {
  override name = 'DemoNodeStartError'
  constructor(
    readonly org: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${org}'s node did not start: ${message}`, options)
  }
}

/** Peering or an agreement between the organisations could not be set up. */
export class DemoSetupError extends DemoError {
  override name = 'DemoSetupError'
}

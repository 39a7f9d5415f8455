/** How failures become exit codes (ARCHITECTURE §10): 0 ok, 1 failure, 2 usage, 78 config. */
import { ConfigError } from '../node/index.ts'

export const EXIT = { ok: 0, failure: 1, usage: 2, config: 78 } as const

/** A wrong use of a command that commander itself cannot see (e.g. a bad argument value). */
export class UsageError extends Error {
  override name = 'UsageError'
}

/** The command ran but its outcome is a failure the user asked to hear about (e.g. --count not reached). */
export class CommandFailedError extends Error {
  override name = 'CommandFailedError'
}

export function exitCodeFor(error: unknown): number {
  if (error instanceof ConfigError) return EXIT.config
  if (error instanceof UsageError) return EXIT.usage
  return EXIT.failure
}

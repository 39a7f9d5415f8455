/**
 * Output of commands: with `--json` one JSON document (or NDJSON for streams) on stdout,
 * otherwise plain lines for people. Errors go to stderr.
 */

export interface GlobalOptions {
  dataDir?: string
  json?: boolean
  logLevel?: string
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`)
}

export function printLines(lines: readonly string[]): void {
  process.stdout.write(`${lines.join('\n')}\n`)
}

/** Print a result: JSON when asked, else the plain rendering. */
export function report<T>(options: GlobalOptions, value: T, plain: (value: T) => string[]): void {
  if (options.json) printJson(value)
  else printLines(plain(value))
}

export function printError(options: GlobalOptions, error: unknown): void {
  const err = error as Error
  if (options.json) {
    process.stderr.write(
      `${JSON.stringify({ error: err.name ?? 'Error', message: err.message ?? String(error) })}\n`,
    )
  } else {
    process.stderr.write(`oe-node: ${err.message ?? String(error)}\n`)
  }
}

/** `1h 2m 3s` from seconds. */
export function formatDuration(seconds: number): string {
  const parts: string[] = []
  const d = Math.floor(seconds / 86400)
  const h = Math.floor((seconds % 86400) / 3600)
  const m = Math.floor((seconds % 3600) / 60)
  const s = seconds % 60
  if (d) parts.push(`${d}d`)
  if (h) parts.push(`${h}h`)
  if (m) parts.push(`${m}m`)
  if (s || parts.length === 0) parts.push(`${s}s`)
  return parts.join(' ')
}

/**
 * Shared pieces of the benchmark suites: child processes that are always cleaned up, temp dirs,
 * free ports, statistics, machine facts, result files and markdown tables.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { closeSync, openSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { cpus, tmpdir, totalmem } from 'node:os'
import { join, resolve } from 'node:path'

export const root = resolve(import.meta.dir, '..', '..')
export const resultsDir = join(root, 'bench-results')

export type Numbers = Record<string, number>

/** One line of a suite's table: a metric, its value and what it is held against. */
export interface TableRow {
  metric: string
  value: string
  reference: string
}

export interface SuiteResult {
  suite: string
  when: string
  machine: { cpus: number; memGiB: number; bun: string }
  metrics: Numbers
  baselines: Numbers
  ratios: Numbers
  targets: Numbers
  /** Printed, not written to the JSON. */
  table: TableRow[]
  /** The rows worth repeating in the combined table at the end. */
  headline: TableRow[]
}

export type Suite = (scope: Scope) => Promise<SuiteResult>

export function machine(): SuiteResult['machine'] {
  return {
    cpus: cpus().length,
    memGiB: Math.round((totalmem() / 1024 ** 3) * 10) / 10,
    bun: Bun.version,
  }
}

/** Progress goes to stderr so stdout carries only the tables. */
export function log(message: string): void {
  console.error(`bench: ${message}`)
}

// ---------------------------------------------------------------------------------------------
// Cleanup scope

/**
 * Everything a suite starts or creates is registered here and undone in reverse order by
 * `close()`, which the runner calls in a finally block (and on SIGINT/SIGTERM).
 */
export class Scope {
  private readonly steps: { name: string; run: () => Promise<void> | void }[] = []
  private closing: Promise<void> | undefined

  defer(name: string, run: () => Promise<void> | void): void {
    this.steps.push({ name, run })
  }

  async tempDir(prefix: string): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), `oe-bench-${prefix}-`))
    this.defer(`remove ${dir}`, () => rm(dir, { recursive: true, force: true }))
    return dir
  }

  /** Spawn a process in its own process group; it is stopped when the scope closes. */
  spawn(name: string, command: string, args: string[], options: SpawnOptions = {}): Child {
    const child = new Child(name, command, args, options)
    this.defer(`stop ${name}`, async () => {
      await child.stop()
    })
    return child
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      while (this.steps.length > 0) {
        const step = this.steps.pop()!
        try {
          await step.run()
        } catch (error) {
          log(`cleanup '${step.name}' failed: ${(error as Error).message}`)
        }
      }
    })()
    return this.closing
  }
}

export interface SpawnOptions {
  /** stdout and stderr go to this file (kept for diagnosis); otherwise they are discarded. */
  logFile?: string
  env?: Record<string, string | undefined>
}

export interface ExitInfo {
  code: number | null
  signal: string | null
}

/** A child process in its own process group, so a forced stop also ends what it started. */
export class Child {
  readonly spawnedAt: number
  readonly exited: Promise<ExitInfo>
  exit: ExitInfo | undefined
  private readonly process: ChildProcess

  constructor(
    readonly name: string,
    command: string,
    args: string[],
    private readonly options: SpawnOptions,
  ) {
    const fd = options.logFile ? openSync(options.logFile, 'a') : undefined
    this.spawnedAt = performance.now()
    this.process = spawn(command, args, {
      detached: true,
      stdio: ['ignore', fd ?? 'ignore', fd ?? 'ignore'],
      env: options.env ?? process.env,
    })
    if (fd !== undefined) closeSync(fd)
    this.exited = new Promise<ExitInfo>((resolveExit) => {
      this.process.once('exit', (code, signal) => {
        this.exit = { code, signal }
        resolveExit(this.exit)
      })
      this.process.once('error', (error) => {
        log(`${name}: ${error.message}`)
        this.exit = { code: -1, signal: null }
        resolveExit(this.exit)
      })
    })
  }

  get pid(): number {
    return this.process.pid ?? 0
  }

  get running(): boolean {
    return this.exit === undefined
  }

  /** The last lines the process wrote (when it has a log file). */
  tail(lines = 15): string {
    if (!this.options.logFile) return ''
    try {
      return readFileSync(this.options.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
    } catch {
      return ''
    }
  }

  /** SIGTERM, then SIGKILL to the whole process group after `graceMs`; resolves once it exited. */
  async stop(graceMs = 5_000): Promise<ExitInfo> {
    if (this.exit) return this.exit
    this.signal('SIGTERM', false)
    let timer: ReturnType<typeof setTimeout> | undefined
    const timeout = new Promise<'timeout'>((resolveTimeout) => {
      timer = setTimeout(() => resolveTimeout('timeout'), graceMs)
    })
    const first = await Promise.race([this.exited, timeout])
    clearTimeout(timer)
    if (first !== 'timeout') return first
    log(`${this.name} (pid ${this.pid}) did not exit ${graceMs} ms after SIGTERM: SIGKILL`)
    this.signal('SIGKILL', true)
    return this.exited
  }

  private signal(signal: NodeJS.Signals, group: boolean): void {
    if (!this.pid) return
    try {
      process.kill(group ? -this.pid : this.pid, signal)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error
    }
  }
}

/** Run a command to completion with inherited output; throws on a non-zero exit. */
export async function run(command: string, args: string[], cwd = root): Promise<void> {
  const child = spawn(command, args, { cwd, stdio: ['ignore', 'inherit', 'inherit'] })
  const code = await new Promise<number | null>((resolveRun, reject) => {
    child.once('error', reject)
    child.once('exit', (exitCode) => resolveRun(exitCode))
  })
  if (code !== 0) throw new Error(`${command} ${args.join(' ')} exited with ${code}`)
}

/** A free TCP port on loopback. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, host, () => {
      const address = server.address()
      const port = typeof address === 'object' && address !== null ? address.port : 0
      server.close(() => resolvePort(port))
    })
  })
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

/** Nearest-rank percentile (p in 0..100). */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length))
  return sorted[Math.min(rank, sorted.length) - 1]!
}

/** Round to a sensible number of significant digits for a report. */
export function round(value: number): number {
  if (!Number.isFinite(value)) return value
  const magnitude = Math.abs(value)
  if (magnitude >= 1000) return Math.round(value)
  if (magnitude >= 100) return Math.round(value * 10) / 10
  if (magnitude >= 1) return Math.round(value * 100) / 100
  return Math.round(value * 1000) / 1000
}

/** A number for a table: thousands separated, rounded like `round`. */
export function show(value: number, unit = ''): string {
  if (!Number.isFinite(value)) return 'n/a'
  const text = round(value).toLocaleString('en-US', { maximumFractionDigits: 3 })
  return unit ? `${text} ${unit}` : text
}

export function markdownTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((header, column) =>
    Math.max(header.length, ...rows.map((row) => (row[column] ?? '').length)),
  )
  const line = (cells: readonly string[]): string =>
    `| ${cells.map((cell, column) => cell.padEnd(widths[column]!)).join(' | ')} |`
  return [
    line(headers),
    `| ${widths.map((width) => '-'.repeat(width)).join(' | ')} |`,
    ...rows.map(line),
  ].join('\n')
}

export function suiteTable(result: SuiteResult): string {
  return markdownTable(
    ['metric', 'value', 'target/baseline'],
    result.table.map((row) => [row.metric, row.value, row.reference]),
  )
}

/** Write `bench-results/<suite>.json` (everything but the table rows); returns its path. */
export async function writeResult(result: SuiteResult): Promise<string> {
  const rounded = (numbers: Numbers): Numbers =>
    Object.fromEntries(Object.entries(numbers).map(([key, value]) => [key, round(value)]))
  const json = {
    suite: result.suite,
    when: result.when,
    machine: result.machine,
    metrics: rounded(result.metrics),
    baselines: rounded(result.baselines),
    ratios: rounded(result.ratios),
    targets: result.targets,
  }
  await mkdir(resultsDir, { recursive: true })
  const path = join(resultsDir, `${result.suite}.json`)
  await writeFile(path, `${JSON.stringify(json, null, 2)}\n`)
  return path
}

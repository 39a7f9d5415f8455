/**
 * Shared pieces of the benchmark suites: child processes that are always cleaned up, temp dirs,
 * free ports, statistics, machine facts, result files and markdown tables.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
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
    return this.options.logFile ? tailFile(this.options.logFile, lines) : ''
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

/** The last lines of a file ('' when unreadable). */
export function tailFile(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return ''
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

export { freePort } from '../../data-plane/index.ts'

// ---------------------------------------------------------------------------------------------
// The node under test

/** The compiled binary the suites start by default. */
export const NODE_BINARY = join(root, 'dist', 'oe-node')

/** Build the binary (scripts/build.ts) when `binary` does not exist yet. */
export async function ensureBinary(binary = NODE_BINARY): Promise<void> {
  if (existsSync(binary)) return
  log(`${binary} is missing: building it`)
  await run(process.execPath, [join(root, 'scripts', 'build.ts')])
}

/** The arguments that start a node on `dataDir` with its API and libp2p on loopback, free ports. */
export function startArgs(dataDir: string): string[] {
  return ['--data-dir', dataDir, 'start', '--api', '127.0.0.1:0', '--listen', '/ip4/127.0.0.1/tcp/0']
}

/** The environment without the caller's OE_NODE_* settings, plus `extra`. */
export function nodeEnv(extra: Record<string, string> = {}): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = Object.fromEntries(
    Object.entries(process.env).filter(([key]) => !key.startsWith('OE_NODE_')),
  )
  return Object.assign(env, extra)
}

export interface LaunchOptions {
  /** The process name in the scope and in error messages, e.g. `oe-node a`. */
  label: string
  command: string
  args: string[]
  dataDir: string
  logFile: string
  env?: Record<string, string | undefined>
  pollMs: number
  timeoutMs: number
  /** Whether the node at `api` is ready (an exception counts as not yet); default: /readyz is 200. */
  ready?: (api: string) => Promise<boolean>
}

export interface LaunchedNode {
  child: Child
  api: string
  /** ms from spawn until `ready` first held. */
  readyMs: number
}

async function readyzOk(api: string): Promise<boolean> {
  const response = await fetch(`${api}/readyz`)
  await response.arrayBuffer()
  return response.status === 200
}

/**
 * Spawn a node on its data dir and poll until it has written `<data-dir>/api` and `ready` holds;
 * throws when the process exits first or after `timeoutMs`.
 */
export async function launchNode(scope: Scope, options: LaunchOptions): Promise<LaunchedNode> {
  const { label, dataDir, pollMs, timeoutMs, ready = readyzOk } = options
  const apiFile = join(dataDir, 'api')
  // A node that was killed leaves its URL behind; only a URL written by this run counts.
  await rm(apiFile, { force: true })
  const child = scope.spawn(label, options.command, options.args, {
    logFile: options.logFile,
    ...(options.env ? { env: options.env } : {}),
  })
  let api: string | undefined
  for (;;) {
    if (!child.running) {
      throw new Error(`${label} exited during start (${JSON.stringify(child.exit)}):\n${child.tail()}`)
    }
    if (performance.now() - child.spawnedAt > timeoutMs) {
      throw new Error(`${label} was not ready after ${timeoutMs} ms:\n${child.tail()}`)
    }
    if (api === undefined) {
      const text = await readFile(apiFile, 'utf8').catch(() => '')
      // Written as `<url>\n`: without the newline it may be half written.
      if (text.endsWith('\n')) api = text.trim()
    }
    if (api !== undefined) {
      try {
        if (await ready(api)) return { child, api, readyMs: performance.now() - child.spawnedAt }
      } catch {
        // Not listening yet.
      }
    }
    await Bun.sleep(pollMs)
  }
}

/** The node's admin bearer token. */
export async function readAdminToken(dataDir: string): Promise<string> {
  return (await readFile(join(dataDir, 'admin.token'), 'utf8')).trim()
}

/** The pid of the node's embedded nats-server. */
export async function readNatsPid(dataDir: string): Promise<number> {
  return Number((await readFile(join(dataDir, 'nats', 'nats-server.pid'), 'utf8')).trim())
}

/** Log a warning when a node did not exit cleanly after SIGTERM. */
export function warnUncleanExit(label: string, exit: ExitInfo): void {
  if (exit.code !== 0) log(`warning: ${label} exited with ${JSON.stringify(exit)} after SIGTERM`)
}

/** SIGTERM a node and wait for it, warning when it did not exit cleanly. */
export async function stopNodeChild(child: Child, label: string): Promise<ExitInfo> {
  const exit = await child.stop()
  warnUncleanExit(label, exit)
  return exit
}

/** What the API needs to know about a node to call it. */
export interface ApiNode {
  name: string
  api: string
  token: string
}

export interface Reply {
  status: number
  body: unknown
}

/** `authorization` header for a node's admin token. */
export function bearer(token: string): { authorization: string } {
  return { authorization: `Bearer ${token}` }
}

/** Authenticated JSON API calls that time out after `timeoutMs`. */
export function apiClient(timeoutMs: number): {
  request: (node: ApiNode, method: string, path: string, body?: unknown) => Promise<Reply>
  api: (node: ApiNode, method: string, path: string, body?: unknown) => Promise<unknown>
} {
  const request = async (node: ApiNode, method: string, path: string, body?: unknown): Promise<Reply> => {
    const response = await fetch(`${node.api}${path}`, {
      method,
      headers: { ...bearer(node.token), 'content-type': 'application/json' },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(timeoutMs),
    })
    const text = await response.text()
    let parsed: unknown = text
    try {
      parsed = JSON.parse(text)
    } catch {
      // Kept as text.
    }
    return { status: response.status, body: parsed }
  }
  /** An API call that must succeed; its parsed answer. */
  const api = async (node: ApiNode, method: string, path: string, body?: unknown): Promise<unknown> => {
    const reply = await request(node, method, path, body)
    if (reply.status < 200 || reply.status > 299) {
      throw new Error(
        `node ${node.name}: ${method} ${path} answered ${reply.status}: ${JSON.stringify(reply.body)}`,
      )
    }
    return reply.body
  }
  return { request, api }
}

// ---------------------------------------------------------------------------------------------
// /proc

/** USER_HZ: the unit of /proc/<pid>/stat CPU times (100 on Linux). */
const CLOCK_TICKS = 100

/** User + system CPU time of a process so far, in ms, from /proc (0 when unreadable). */
export function processCpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS
  } catch {
    return 0
  }
}

/** VmRSS of a process in KiB (0 when it is gone). */
export function rssKiB(pid: number): number {
  try {
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return match ? Number(match[1]) : 0
  } catch {
    return 0
  }
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

/**
 * Test helpers: run real oe-node processes (`bun cli/main.ts`, or the compiled binary) on
 * loopback with temp data dirs, and real nats-servers, and clean all of it up.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'

export const ROOT = resolve(import.meta.dirname, '..', '..')
export const CLI = join(ROOT, 'cli', 'main.ts')
/** The Bun executable running the tests (vitest runs under `bun --bun`). */
export const BUN = process.execPath

const cleanups: (() => Promise<void>)[] = []

/** Run registered cleanups (call from afterAll/afterEach). */
export async function cleanupAll(): Promise<void> {
  while (cleanups.length > 0) await cleanups.pop()!().catch(() => {})
}

export async function tempDir(prefix = 'oe-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  cleanups.push(() => rm(dir, { recursive: true, force: true }))
  return dir
}

export interface CliResult {
  code: number
  stdout: string
  stderr: string
}

/** Run one CLI command to completion. */
export function runCli(
  args: string[],
  options: {
    env?: Record<string, string | undefined>
    input?: string
    timeoutMs?: number
    /** What runs the CLI (default `[BUN, CLI]`), e.g. prefixed with `ip netns exec <ns>`. */
    command?: string[]
  } = {},
): Promise<CliResult> {
  const command = options.command ?? [BUN, CLI]
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command[0]!, [...command.slice(1), ...args], {
      env: cleanEnv(options.env),
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk) => {
      stdout += chunk
    })
    child.stderr.on('data', (chunk) => {
      stderr += chunk
    })
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000)
    child.on('error', reject)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolvePromise({ code: code ?? (signal ? 128 : 1), stdout, stderr })
    })
    child.stdin.end(options.input ?? '')
  })
}

function cleanEnv(extra: Record<string, string | undefined> = {}): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith('OE_NODE_') && !key.startsWith('VITEST') && key !== 'NODE_ENV')
      env[key] = value
  }
  for (const [key, value] of Object.entries(extra)) {
    if (value === undefined) delete env[key]
    else env[key] = value
  }
  return env
}

export interface RunningNode {
  dataDir: string
  api: string
  token: string
  process: ChildProcess
  stdout: () => string
  stderr: () => string
  /** SIGTERM and wait; resolves with the exit code. */
  stop: () => Promise<number>
  /** SIGKILL and wait. */
  kill: () => Promise<void>
  exited: Promise<number>
  fetch: (path: string, init?: RequestInit & { token?: string | null }) => Promise<Response>
}

export interface StartNodeOptions {
  dataDir?: string
  args?: string[]
  env?: Record<string, string | undefined>
  /** config.toml written before start (the node adds nothing it does not find). */
  config?: string
  command?: string[]
  readyTimeoutMs?: number
  /** `--api` HOST:PORT (default `127.0.0.1:0`). */
  api?: string
  /** `--listen` multiaddrs (default one at a free loopback port). */
  listen?: string[]
}

/** Start a node and wait until /readyz answers 200. */
export async function startNode(options: StartNodeOptions = {}): Promise<RunningNode> {
  const dataDir = options.dataDir ?? (await tempDir())
  if (options.config !== undefined)
    await writeFile(join(dataDir, 'config.toml'), options.config, { mode: 0o600 })
  await rm(join(dataDir, 'api'), { force: true })
  const command = options.command ?? [BUN, CLI]
  const child = spawn(
    command[0]!,
    [
      ...command.slice(1),
      '--data-dir',
      dataDir,
      'start',
      '--api',
      options.api ?? '127.0.0.1:0',
      ...(options.listen ?? ['/ip4/127.0.0.1/tcp/0']).flatMap((addr) => ['--listen', addr]),
      ...(options.args ?? []),
    ],
    { env: cleanEnv(options.env), stdio: ['ignore', 'pipe', 'pipe'] },
  )
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (chunk) => {
    stdout += chunk
  })
  child.stderr!.on('data', (chunk) => {
    stderr += chunk
  })
  const exited = new Promise<number>((resolveExit) => {
    child.on('exit', (code, signal) => resolveExit(code ?? (signal === 'SIGKILL' ? 137 : 128)))
  })
  let alive = true
  void exited.then(() => {
    alive = false
  })
  const kill = async (): Promise<void> => {
    if (alive) child.kill('SIGKILL')
    await exited
  }
  // At the end of a test: stop gracefully, and end a nats-server a killed node left behind.
  cleanups.push(async () => {
    if (alive) child.kill('SIGTERM')
    const timeout = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 10_000))
    if ((await Promise.race([exited, timeout])) === 'timeout') await kill()
    await killOrphanNatsServer(dataDir)
  })
  const stop = async (): Promise<number> => {
    if (alive) child.kill('SIGTERM')
    const timeout = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 20_000))
    const result = await Promise.race([exited, timeout])
    if (result === 'timeout') {
      child.kill('SIGKILL')
      throw new Error('node did not stop within 20 s of SIGTERM')
    }
    return result
  }
  const deadline = Date.now() + (options.readyTimeoutMs ?? 20_000)
  let api = ''
  while (Date.now() < deadline) {
    if (!alive) throw new Error(`node exited during start: ${stderr.slice(-2000)}`)
    try {
      api = (await readFile(join(dataDir, 'api'), 'utf8')).trim()
      // /readyz is open only to loopback; an API on another address wants the admin token.
      const token = (await readFile(join(dataDir, 'admin.token'), 'utf8').catch(() => '')).trim()
      const response = await fetch(`${api}/readyz`, {
        headers: token ? { authorization: `Bearer ${token}` } : {},
      })
      if (response.status === 200) break
    } catch {
      // Not up yet.
    }
    await Bun.sleep(25)
  }
  if (!api) {
    await kill()
    throw new Error(`node not ready: ${stderr.slice(-2000)}`)
  }
  const token = (await readFile(join(dataDir, 'admin.token'), 'utf8')).trim()
  return {
    dataDir,
    api,
    token,
    process: child,
    stdout: () => stdout,
    stderr: () => stderr,
    stop,
    kill,
    exited,
    fetch: (path, init = {}) => {
      const { token: given, ...rest } = init
      const headers = new Headers(rest.headers)
      const chosen = given === undefined ? token : given
      if (chosen !== null) headers.set('authorization', `Bearer ${chosen}`)
      return fetch(`${api}${path}`, { ...rest, headers })
    },
  }
}

/** SIGKILL the embedded nats-server of a data dir if it still runs (its node was killed). */
export async function killOrphanNatsServer(dataDir: string): Promise<void> {
  const pid = Number(
    (await readFile(join(dataDir, 'nats', 'nats-server.pid'), 'utf8').catch(() => '')).trim(),
  )
  if (!Number.isInteger(pid) || pid <= 0) return
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
  if (!cmdline.includes(dataDir)) return
  try {
    process.kill(pid, 'SIGKILL')
  } catch {
    // Already gone.
  }
}

/** Poll until `check` returns true. */
export async function waitFor(
  check: () => Promise<boolean> | boolean,
  timeoutMs = 15_000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (
      await Promise.resolve()
        .then(check)
        .catch(() => false)
    )
      return
    await Bun.sleep(50)
  }
  throw new Error(`timed out waiting for ${what}`)
}

/** One line of the tail endpoint: a subject and its decoded payload. */
export interface TailMessage {
  subject: string
  data: { v?: number; t?: number; [field: string]: unknown }
}

/** Messages a node's stream holds for a subject, read through the API's tail endpoint. */
export async function readSubject(
  node: RunningNode,
  subject: string,
  settleMs = 1_000,
): Promise<TailMessage[]> {
  const controller = new AbortController()
  const response = await node.fetch(`/v1/tail?${new URLSearchParams({ subject, from_start: '1' })}`, {
    signal: controller.signal,
  })
  const messages: TailMessage[] = []
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader()
  let buffered = ''
  let timer = setTimeout(() => controller.abort(), settleMs * 3)
  try {
    while (true) {
      const { value, done } = await reader.read()
      if (done) break
      buffered += value
      let newline = buffered.indexOf('\n')
      while (newline >= 0) {
        const line = buffered.slice(0, newline)
        buffered = buffered.slice(newline + 1)
        newline = buffered.indexOf('\n')
        if (line.trim() !== '') messages.push(JSON.parse(line))
      }
      clearTimeout(timer)
      timer = setTimeout(() => controller.abort(), settleMs)
    }
  } catch (error) {
    if ((error as Error).name !== 'AbortError') throw error
  } finally {
    clearTimeout(timer)
  }
  return messages
}

export interface NatsServerProcess {
  url: string
  port: number
  stop: () => Promise<void>
}

/** A standalone nats-server with JetStream, as an organisation's existing NATS would be. */
export async function startNatsServer(
  options: { user?: string; password?: string } = {},
): Promise<NatsServerProcess> {
  const dir = await tempDir('oe-nats-')
  const { freePort } = await import('../../data-plane/index.ts')
  const port = await freePort()
  const args = ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', dir]
  if (options.user) args.push('--user', options.user, '--pass', options.password ?? '')
  const child = spawn('nats-server', args, { stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise<void>((r) => child.on('exit', () => r()))
  await new Promise<void>((resolveReady, reject) => {
    const timer = setTimeout(() => reject(new Error('nats-server not ready')), 10_000)
    child.stderr!.on('data', (chunk: Buffer) => {
      if (chunk.toString().includes('Server is ready')) {
        clearTimeout(timer)
        resolveReady()
      }
    })
  })
  const stop = async (): Promise<void> => {
    if (child.exitCode === null) child.kill('SIGTERM')
    await exited
  }
  cleanups.push(stop)
  return { url: `nats://127.0.0.1:${port}`, port, stop }
}

export function telemetry(
  count: number,
  options: { rid?: (i: number) => string; t?: number; q?: string } = {},
) {
  const t = options.t ?? Date.now()
  return Array.from({ length: count }, (_, i) => ({
    kind: 'meter',
    rid: options.rid ? options.rid(i) : `m${i % 10}`,
    q: options.q ?? 'power',
    v: i,
    t: t + i,
  }))
}

/** A CLI command that is still running: its output so far, and its end. */
export interface CliProcess {
  stdout: () => string
  stderr: () => string
  done: Promise<CliResult>
}

/** Start one CLI command and watch its output while it runs (`runCli` waits for the end). */
export function spawnCli(
  args: string[],
  options: { env?: Record<string, string | undefined>; timeoutMs?: number } = {},
): CliProcess {
  const child = spawn(BUN, [CLI, ...args], { env: cleanEnv(options.env), stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk) => {
    stdout += chunk
  })
  child.stderr.on('data', (chunk) => {
    stderr += chunk
  })
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000)
  const done = new Promise<CliResult>((resolveDone, reject) => {
    child.on('error', reject)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolveDone({ code: code ?? (signal ? 128 : 1), stdout, stderr })
    })
  })
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await done.catch(() => {})
  })
  return { stdout: () => stdout, stderr: () => stderr, done }
}

/**
 * One sample from Prometheus text: the value of the first `name` line whose labels include
 * `labels`, or undefined when there is none.
 */
export function metricValue(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  for (const line of text.split('\n')) {
    const sample = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line)
    if (!sample || sample[1] !== name) continue
    const found = new Map<string, string>()
    for (const [, key, value] of (sample[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g))
      found.set(key!, value!)
    if (Object.entries(labels).every(([key, value]) => found.get(key) === value)) return Number(sample[3])
  }
  return undefined
}

/** One sample of a node's /metrics, scraped from loopback (no token needed there). */
export async function scrapeMetric(
  node: RunningNode,
  name: string,
  labels: Record<string, string> = {},
): Promise<number | undefined> {
  return metricValue(await (await node.fetch('/metrics', { token: null })).text(), name, labels)
}

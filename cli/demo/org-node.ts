/**
 * One organisation's node in the demo: an `oe-node start` child process of this same executable,
 * with its own temp data dir, config.toml written before start, and its log in the data dir.
 * The child runs in its own process group, so a Ctrl-C at the terminal reaches only the demo,
 * which then stops every node once, in order (a second signal would make a node exit at once).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { closeSync, openSync } from 'node:fs'
import { readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { NodeClient } from '../../node/index.ts'
import { DemoNodeStartError } from './errors.ts'

/** How to run this executable again: the compiled binary alone, or Bun with the entry script. */
export function selfCommand(): string[] {
  const main = Bun.main
  // A compiled binary's modules live in Bun's embedded file system.
  const compiled = main.startsWith('/$bunfs/') || main.includes('~BUN')
  if (compiled) return [process.execPath]
  return [process.execPath, process.argv[1] ?? main]
}

export { freePort } from '../../data-plane/index.ts'

/** The environment for the nodes: ours, without OE_NODE_* settings that would override the demo's. */
function childEnv(): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith('OE_NODE_')) env[key] = value
  }
  return env
}

export interface DemoNodeInit {
  /** Organisation name, e.g. `Gridco`. */
  org: string
  dataDir: string
  /** config.toml text. */
  config: string
  /** libp2p listen multiaddr. */
  listen: string
  /** HTTP API `HOST:PORT`; port 0 picks a free one. */
  api: string
  command: string[]
}

export const NODE_LOG = 'demo-node.log'
const READY_TIMEOUT_MS = 30_000
const STOP_TIMEOUT_MS = 10_000

export class DemoNode {
  private child: ChildProcess | undefined
  private exitedPromise: Promise<number> = Promise.resolve(0)
  private running = false
  private clientValue: NodeClient | undefined

  constructor(readonly init: DemoNodeInit) {}

  get org(): string {
    return this.init.org
  }

  get dataDir(): string {
    return this.init.dataDir
  }

  get client(): NodeClient {
    if (!this.clientValue) throw new Error(`${this.org}'s node is not running`)
    return this.clientValue
  }

  get pid(): number | undefined {
    return this.child?.pid
  }

  /** Write the config, spawn the node and wait until /readyz answers 200. */
  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    const { dataDir, command } = this.init
    await writeFile(join(dataDir, 'config.toml'), this.init.config, { mode: 0o600 })
    const log = openSync(join(dataDir, NODE_LOG), 'a', 0o600)
    try {
      this.child = spawn(
        command[0]!,
        [
          ...command.slice(1),
          '--data-dir',
          dataDir,
          'start',
          '--api',
          this.init.api,
          '--listen',
          this.init.listen,
        ],
        { detached: true, stdio: ['ignore', log, log], env: childEnv() },
      )
    } finally {
      closeSync(log)
    }
    this.running = true
    const child = this.child
    this.exitedPromise = new Promise<number>((resolve) => {
      child.once('exit', (code, signal) => {
        this.running = false
        resolve(code ?? (signal === 'SIGKILL' ? 137 : 128))
      })
      child.once('error', () => {
        this.running = false
        resolve(127)
      })
    })
    const deadline = AbortSignal.any([
      AbortSignal.timeout(READY_TIMEOUT_MS),
      ...(options.signal ? [options.signal] : []),
    ])
    while (true) {
      if (!this.running) {
        throw new DemoNodeStartError(
          this.org,
          `it exited (code ${await this.exitedPromise})\n${await this.logTail()}`,
        )
      }
      if (deadline.aborted) {
        if (options.signal?.aborted) throw options.signal.reason
        throw new DemoNodeStartError(
          this.org,
          `not ready within ${READY_TIMEOUT_MS / 1000} s\n${await this.logTail()}`,
        )
      }
      try {
        const client = await NodeClient.fromDataDir(dataDir)
        const response = await fetch(`${client.baseUrl}/readyz`, { signal: AbortSignal.timeout(1_000) })
        if (response.status === 200) {
          this.clientValue = client
          return
        }
      } catch {
        // Not up yet.
      }
      await Bun.sleep(50)
    }
  }

  /** The last lines of the node's log, for error messages. */
  async logTail(lines = 15): Promise<string> {
    const text = await readFile(join(this.dataDir, NODE_LOG), 'utf8').catch(() => '')
    return text.trimEnd().split('\n').slice(-lines).join('\n')
  }

  /** SIGTERM (the node's graceful stop), then SIGKILL of its process group after 10 s. */
  async stop(): Promise<number> {
    const child = this.child
    if (!child) return 0
    if (this.running) signalGroup(child, 'SIGTERM')
    const timer = setTimeout(() => {
      if (this.running) signalGroup(child, 'SIGKILL')
    }, STOP_TIMEOUT_MS)
    const code = await this.exitedPromise
    clearTimeout(timer)
    // A node that did not stop cleanly can leave its nats-server (same process group) behind.
    if (code !== 0) signalGroup(child, 'SIGKILL')
    return code
  }

  /** For a forced exit: kill the node and its nats-server without waiting. */
  kill(): void {
    if (this.child) signalGroup(this.child, 'SIGKILL')
  }
}

function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return
  try {
    // Negative pid: the whole process group the detached child leads.
    process.kill(-child.pid, signal)
  } catch {
    try {
      child.kill(signal)
    } catch {
      // Already gone.
    }
  }
}

/** Processes whose command line names one of `dirs` (what a crashed node might leave behind). */
export async function processesUsing(dirs: readonly string[]): Promise<number[]> {
  const found: number[] = []
  const entries = await readdir('/proc').catch(() => [] as string[])
  for (const entry of entries) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')
    if (dirs.some((dir) => cmdline.includes(dir))) found.push(Number(entry))
  }
  return found
}

/** SIGKILL whatever still runs from the demo's data dirs, then remove them. */
export async function removeDirs(dirs: readonly string[]): Promise<void> {
  for (const pid of await processesUsing(dirs)) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // Gone meanwhile.
    }
  }
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })))
}

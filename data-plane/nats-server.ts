/**
 * Supervisor for the embedded nats-server: finds the executable (embedded in the binary, named
 * in config, or on PATH), writes its config (loopback only, user/password auth, JetStream store
 * under the data dir), starts it, waits until it is ready, restarts it with backoff if it dies,
 * and stops it cleanly.
 *
 * With `mqtt`, the server also runs its MQTT listener (it needs JetStream and a server name,
 * both always set here). MQTT clients are then decided by an authorization callout: the node's
 * own user is exempt, every other connection is put to the callout service (mqtt-auth.ts), whose
 * answers must be signed by the account key generated here, once per process.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createAccount, type KeyPair } from '@nats-io/nkeys'
import { embeddedNatsServerPath } from './embedded-nats.ts'
import { NatsServerNotFoundError, NatsServerStartError, NatsServerVersionError } from './errors.ts'

const execFileAsync = promisify(execFile)

export const MIN_NATS_SERVER_VERSION = [2, 10] as const

export interface Logger {
  child(bindings: Record<string, unknown>): Logger
  debug(obj: object, msg?: string): void
  info(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
}

export interface EmbeddedNatsServerInit {
  /** Folder for config, pid file, credentials and the JetStream store (`<data-dir>/nats`). */
  dir: string
  /** Client port; 0 picks a free one (kept across restarts so clients reconnect). */
  port?: number
  /** Explicit executable; otherwise the embedded one, then PATH. */
  executable?: string
  maxMemoryStore?: number
  maxFileStore?: number
  readyTimeoutMs?: number
  /** Run nats-server's MQTT listener too (off without this). */
  mqtt?: EmbeddedMqttInit
}

export interface EmbeddedMqttInit {
  /** `HOST:PORT` (port 0 picks a free one, kept across restarts). */
  listen: string
  /** PEM certificate and key files: clients then connect with TLS (`mqtts://`). */
  tls?: { cert: string; key: string }
}

/** The MQTT listener of a running embedded server, and the key its authorization callout signs with. */
export interface EmbeddedMqtt {
  /** `mqtt://HOST:PORT`, or `mqtts://` with TLS. */
  url: string
  host: string
  port: number
  tls: boolean
  /** Account key whose public half the server trusts as the callout issuer. */
  issuer: KeyPair
}

export interface EmbeddedNatsServerComponents {
  logger: Logger
  /** Called every time the server is restarted after dying. */
  onRestart?: () => void
}

export interface NatsCredentials {
  user: string
  password: string
}

export type EmbeddedNatsServerState =
  | { status: 'stopped' }
  | { status: 'starting' }
  | { status: 'running'; pid: number }
  | { status: 'restarting'; attempt: number; lastExit: string }

export function isVersionAtLeast(
  version: string,
  min: readonly [number, number] = MIN_NATS_SERVER_VERSION,
): boolean {
  const match = /(\d+)\.(\d+)\.(\d+)/.exec(version)
  if (!match) return false
  const major = Number(match[1])
  const minor = Number(match[2])
  return major > min[0] || (major === min[0] && minor >= min[1])
}

/** Version string printed by `nats-server --version`, e.g. `2.10.27`. */
export async function natsServerVersion(executable: string): Promise<string> {
  const { stdout } = await execFileAsync(executable, ['--version'], { timeout: 10_000 })
  const match = /(\d+\.\d+\.\d+)/.exec(stdout)
  if (!match?.[1])
    throw new NatsServerStartError(`could not read the version of ${executable}: '${stdout.trim()}'`)
  return match[1]
}

/** Find a nats-server: explicit path, else the embedded one (extracted into `dir`), else PATH. */
export async function locateNatsServer(dir: string, explicit?: string): Promise<string> {
  if (explicit) {
    if (!(await isExecutable(explicit)))
      throw new NatsServerNotFoundError(`nats-server '${explicit}' is not an executable file`)
    return explicit
  }
  if (embeddedNatsServerPath !== null) return extractEmbedded(embeddedNatsServerPath, dir)
  for (const folder of (process.env.PATH ?? '').split(':')) {
    if (folder === '') continue
    const candidate = join(folder, 'nats-server')
    if (await isExecutable(candidate)) return candidate
  }
  throw new NatsServerNotFoundError()
}

async function isExecutable(path: string): Promise<boolean> {
  try {
    const info = await stat(path)
    return info.isFile() && (info.mode & 0o111) !== 0
  } catch {
    return false
  }
}

async function extractEmbedded(source: string, dir: string): Promise<string> {
  const bytes = new Uint8Array(await Bun.file(source).arrayBuffer())
  const hash = new Bun.CryptoHasher('sha256').update(bytes).digest('hex').slice(0, 16)
  const target = join(dir, 'bin', `nats-server-${hash}`)
  if (await isExecutable(target)) return target
  await mkdir(join(dir, 'bin'), { recursive: true, mode: 0o700 })
  const partial = `${target}.partial-${process.pid}`
  await writeFile(partial, bytes, { mode: 0o700 })
  await Bun.write(target, Bun.file(partial))
  await chmod(target, 0o700)
  await rm(partial, { force: true })
  return target
}

/** A free TCP port on loopback. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, host, () => {
      const address = server.address()
      const port = typeof address === 'object' && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })
}

/** Load or create the embedded server's client credentials (file 0600). */
export async function loadOrCreateCredentials(dir: string): Promise<NatsCredentials> {
  const path = join(dir, 'auth.json')
  try {
    const parsed = JSON.parse(await readFile(path, 'utf8')) as Partial<NatsCredentials>
    if (typeof parsed.user === 'string' && typeof parsed.password === 'string') {
      return { user: parsed.user, password: parsed.password }
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error
  }
  const credentials = { user: 'oe-node', password: randomBytes(24).toString('base64url') }
  await mkdir(dir, { recursive: true, mode: 0o700 })
  await writeFile(path, `${JSON.stringify(credentials)}\n`, { mode: 0o600 })
  return credentials
}

/** True when the process no longer runs (absent, or a zombie nobody has reaped yet). */
/**
 * The embedded nats-server must not outlive the node, even after a `kill -9` of the node, which
 * runs no cleanup. So it runs under a small /bin/sh watchdog: it checks every second that the
 * node (its parent) is alive and ends the server when it is not, passes SIGTERM/SIGINT on, and
 * exits with the server's status (the supervisor restarts a server that dies). Where there is no
 * /bin/sh, the server is run directly and the next start's orphan check is the backstop.
 */
const WATCHDOG = [
  '"$1" -c "$2" & child=$!',
  "trap 'kill -TERM $child 2>/dev/null; wait $child; exit $?' TERM INT",
  'while kill -0 "$PPID" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 1 & wait $!; done',
  'kill -TERM "$child" 2>/dev/null',
  'wait "$child"',
].join('\n')

function watchedCommand(executable: string, config: string): string[] {
  if (!existsSync('/bin/sh')) return [executable, '-c', config]
  return ['/bin/sh', '-c', WATCHDOG, 'oe-nats-watchdog', executable, config]
}

async function processGone(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')
  } catch {
    return true
  }
}

const quote = (text: string): string => JSON.stringify(text)

/** `HOST:PORT` or `[IPv6]:PORT`. */
function splitHostPort(listen: string): { host: string; port: number } {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(listen)
  const port = Number(match?.[3])
  if (!match || port > 65_535)
    throw new NatsServerStartError(`the MQTT listen address '${listen}' is not HOST:PORT`)
  return { host: match[1] ?? match[2]!, port }
}

async function prepareMqtt(init: EmbeddedMqttInit): Promise<EmbeddedMqtt> {
  const { host, port } = splitHostPort(init.listen)
  const chosen = port > 0 ? port : await freePort(host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host)
  const tls = init.tls !== undefined
  const shown = host.includes(':') ? `[${host}]` : host
  return {
    url: `${tls ? 'mqtts' : 'mqtt'}://${shown}:${chosen}`,
    host,
    port: chosen,
    tls,
    issuer: createAccount(),
  }
}

function mqttBlock(mqtt: EmbeddedMqtt, init: EmbeddedMqttInit): string[] {
  const host = mqtt.host.includes(':') ? `[${mqtt.host}]` : mqtt.host
  return [
    'mqtt {',
    `  listen: ${quote(`${host}:${mqtt.port}`)}`,
    ...(init.tls
      ? ['  tls {', `    cert_file: ${quote(init.tls.cert)}`, `    key_file: ${quote(init.tls.key)}`, '  }']
      : []),
    '}',
  ]
}

export class EmbeddedNatsServer {
  private child: ChildProcess | undefined
  private stopping = false
  private restartTimer: ReturnType<typeof setTimeout> | undefined
  private attempt = 0
  private portInUse = 0
  private executablePath = ''
  private credentialsValue: NatsCredentials | undefined
  private stateValue: EmbeddedNatsServerState = { status: 'stopped' }
  private lastOutput: string[] = []
  private mqttValue: EmbeddedMqtt | undefined
  restarts = 0

  constructor(
    private readonly init: EmbeddedNatsServerInit,
    private readonly components: EmbeddedNatsServerComponents,
  ) {}

  get state(): EmbeddedNatsServerState {
    return this.stateValue
  }

  get port(): number {
    return this.portInUse
  }

  get url(): string {
    return `nats://127.0.0.1:${this.portInUse}`
  }

  get credentials(): NatsCredentials {
    if (!this.credentialsValue)
      throw new NatsServerStartError('the embedded nats-server has not been started')
    return this.credentialsValue
  }

  get executable(): string {
    return this.executablePath
  }

  /** The MQTT listener, when `mqtt` was given and the server has started. */
  get mqtt(): EmbeddedMqtt | undefined {
    return this.mqttValue
  }

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.stateValue.status !== 'stopped') return
    this.stopping = false
    this.stateValue = { status: 'starting' }
    try {
      const { dir } = this.init
      await mkdir(join(dir, 'jetstream'), { recursive: true, mode: 0o700 })
      this.executablePath = await locateNatsServer(dir, this.init.executable)
      const version = await natsServerVersion(this.executablePath)
      if (!isVersionAtLeast(version)) throw new NatsServerVersionError(version)
      await this.killOrphan()
      this.credentialsValue = await loadOrCreateCredentials(dir)
      this.portInUse = this.init.port && this.init.port > 0 ? this.init.port : await freePort()
      if (this.init.mqtt && !this.mqttValue) this.mqttValue = await prepareMqtt(this.init.mqtt)
      await this.writeConfig()
      await this.spawnAndWait(options.signal)
      this.components.logger.info(
        { port: this.portInUse, version, executable: this.executablePath },
        'embedded nats-server ready',
      )
    } catch (error) {
      this.stopping = true
      await this.killChild()
      this.stateValue = { status: 'stopped' }
      throw error
    }
  }

  async stop(): Promise<void> {
    this.stopping = true
    if (this.restartTimer) clearTimeout(this.restartTimer)
    this.restartTimer = undefined
    await this.killChild()
    this.stateValue = { status: 'stopped' }
  }

  /** Last resort when the process must exit at once: end the child without waiting. */
  kill(): void {
    this.stopping = true
    if (this.restartTimer) clearTimeout(this.restartTimer)
    // The watchdog passes SIGTERM on; a SIGKILL would end only the watchdog.
    this.child?.kill('SIGTERM')
  }

  private get configPath(): string {
    return join(this.init.dir, 'nats-server.conf')
  }

  private get pidPath(): string {
    return join(this.init.dir, 'nats-server.pid')
  }

  private async writeConfig(): Promise<void> {
    const { dir } = this.init
    const credentials = this.credentials
    const lines = [
      '# Written by oe-node at every start; edits are overwritten.',
      `listen: ${quote(`127.0.0.1:${this.portInUse}`)}`,
      `server_name: ${quote(`oe-node-${this.portInUse}`)}`,
      `pid_file: ${quote(this.pidPath)}`,
      'max_payload: 8MB',
      'jetstream {',
      `  store_dir: ${quote(join(dir, 'jetstream'))}`,
      `  max_memory_store: ${this.init.maxMemoryStore ?? 256 * 1024 * 1024}`,
      `  max_file_store: ${this.init.maxFileStore ?? 10 * 1024 * 1024 * 1024}`,
      '}',
      'authorization {',
      `  users: [ { user: ${quote(credentials.user)}, password: ${quote(credentials.password)} } ]`,
      ...(this.mqttValue
        ? [
            // Everyone but the node itself (MQTT clients) is decided by the callout service.
            '  auth_callout {',
            `    issuer: ${quote(this.mqttValue.issuer.getPublicKey())}`,
            `    auth_users: [ ${quote(credentials.user)} ]`,
            '  }',
          ]
        : []),
      '}',
      ...(this.mqttValue ? mqttBlock(this.mqttValue, this.init.mqtt!) : []),
      '',
    ]
    await writeFile(this.configPath, lines.join('\n'), { mode: 0o600 })
  }

  /** A nats-server left behind anyway (its watchdog killed too) holds our port and store: end it. */
  private async killOrphan(): Promise<void> {
    let pid: number
    try {
      pid = Number((await readFile(this.pidPath, 'utf8')).trim())
    } catch {
      return
    }
    if (!Number.isInteger(pid) || pid <= 0) return
    let cmdline = ''
    try {
      cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).replaceAll('\0', ' ')
    } catch {
      return
    }
    if (!cmdline.includes(this.configPath)) return
    this.components.logger.warn({ pid }, 'stopping a nats-server left behind by an earlier run')
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      return
    }
    for (let i = 0; i < 250 && !(await processGone(pid)); i++) await Bun.sleep(20)
  }

  private spawnAndWait(signal?: AbortSignal): Promise<void> {
    const timeoutMs = this.init.readyTimeoutMs ?? 15_000
    return new Promise<void>((resolve, reject) => {
      this.lastOutput = []
      const [command, ...args] = watchedCommand(this.executablePath, this.configPath)
      const child = spawn(command!, args, { stdio: ['ignore', 'pipe', 'pipe'] })
      this.child = child
      let settled = false
      let buffered = ''
      const finish = (error?: Error): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        if (error) reject(error)
        else resolve()
      }
      const onAbort = (): void =>
        finish(new NatsServerStartError('start of the embedded nats-server was aborted'))
      signal?.addEventListener('abort', onAbort, { once: true })
      const timer = setTimeout(
        () =>
          finish(
            new NatsServerStartError(
              `the embedded nats-server was not ready after ${timeoutMs} ms: ${this.lastOutput.slice(-3).join(' | ')}`,
            ),
          ),
        timeoutMs,
      )
      const onData = (chunk: Buffer): void => {
        buffered += chunk.toString('utf8')
        let newline = buffered.indexOf('\n')
        while (newline >= 0) {
          const line = buffered.slice(0, newline).trim()
          buffered = buffered.slice(newline + 1)
          newline = buffered.indexOf('\n')
          if (line === '') continue
          this.lastOutput.push(line)
          if (this.lastOutput.length > 20) this.lastOutput.shift()
          this.components.logger.debug({ line }, 'nats-server')
          if (line.includes('Server is ready')) {
            this.stateValue = { status: 'running', pid: child.pid ?? 0 }
            finish()
          }
        }
      }
      child.stdout?.on('data', onData)
      child.stderr?.on('data', onData)
      child.once('error', (error) =>
        finish(new NatsServerStartError(`could not run nats-server: ${error.message}`)),
      )
      child.once('exit', (code, exitSignal) => {
        const reason = exitSignal ? `signal ${exitSignal}` : `exit code ${code}`
        if (this.child === child) this.child = undefined
        if (!settled) {
          finish(
            new NatsServerStartError(
              `nats-server stopped during start (${reason}): ${this.lastOutput.slice(-3).join(' | ')}`,
            ),
          )
          return
        }
        if (!this.stopping) this.scheduleRestart(reason)
      })
    })
  }

  private scheduleRestart(reason: string): void {
    this.attempt += 1
    const delay = Math.min(100 * 2 ** (this.attempt - 1), 5_000)
    this.stateValue = { status: 'restarting', attempt: this.attempt, lastExit: reason }
    this.components.logger.warn(
      { reason, attempt: this.attempt, delayMs: delay },
      'embedded nats-server died; restarting',
    )
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined
      if (this.stopping) return
      this.spawnAndWait()
        .then(() => {
          this.restarts += 1
          const startedAt = Date.now()
          // Only a server that stays up a while resets the backoff.
          setTimeout(() => {
            if (this.stateValue.status === 'running' && Date.now() - startedAt >= 30_000) this.attempt = 0
          }, 30_000).unref()
          this.components.logger.info(
            { port: this.portInUse, restarts: this.restarts },
            'embedded nats-server restarted',
          )
          this.components.onRestart?.()
        })
        .catch((error: Error) => {
          this.components.logger.error({ err: error.message }, 'embedded nats-server restart failed')
          if (!this.stopping && this.child === undefined) this.scheduleRestart(error.message)
        })
    }, delay)
  }

  private async killChild(): Promise<void> {
    const child = this.child
    if (!child || child.exitCode !== null || child.signalCode !== null) {
      this.child = undefined
      return
    }
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
    child.kill('SIGTERM')
    const timeout = Bun.sleep(5_000).then(() => 'timeout' as const)
    if ((await Promise.race([exited, timeout])) === 'timeout') {
      // The server itself (its pid file), then the watchdog.
      const pid = Number((await readFile(this.pidPath, 'utf8').catch(() => '')).trim())
      if (Number.isInteger(pid) && pid > 0) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          // Gone already.
        }
      }
      child.kill('SIGKILL')
      await exited
    }
    this.child = undefined
  }
}

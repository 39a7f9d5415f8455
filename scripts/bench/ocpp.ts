/**
 * The `ocpp` suite (ARCHITECTURE §11): the compiled node with the OCPP plugin (`auto_accept`) on
 * loopback, and simulated OCPP 1.6-J charging stations (ocpp-rpc RPCClient) spread over WORKERS
 * processes (scripts/bench/ocpp-stations.ts). The stations are added in steps (500 → 1,000 →
 * 2,000); at each step:
 *
 * 1. open the new stations (connect, BootNotification, StatusNotification; at the first step also
 *    one unmeasured MeterValues round to warm the node's code paths), let the node settle, and
 *    read its RSS and idle CPU (the node and its nats-server, VmRSS) with every station connected and
 *    idle: RSS per connection = (RSS now − RSS with no station) / stations;
 * 2. sustained: every station sends MeterValues (3 sampled values) every PERIOD_MS for ROUNDS
 *    rounds, the stations evenly spread over the period (N stations offer N / 10 messages/s);
 *    CALL→CALLRESULT latency as each station sees it, p50/p99, and the rate achieved;
 * 3. burst: every station sends one MeterValues at the same moment;
 * 4. the node kept up: OE_TEL (read over the node's NATS) grew by exactly the answered
 *    MeterValues × 3 records.
 *
 * `metrics.stations` is the largest step at which every station connected; `metrics.p99_ms` the
 * sustained p99 at that step.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { closeSync, openSync, readdirSync } from 'node:fs'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { loadavg } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/nats-core'
import { connect } from '@nats-io/transport-node'
import {
  bearer,
  type Child,
  processCpuMs as cpuMs,
  ensureBinary,
  freePort,
  launchNode,
  log,
  machine,
  markdownTable,
  NODE_BINARY,
  type Numbers,
  percentile,
  readNatsPid,
  root,
  round,
  rssKiB,
  type Scope,
  type SuiteResult,
  show,
  startArgs,
  type TableRow,
  tailFile as tail,
} from './common.ts'

const WORKER_SCRIPT = join(import.meta.dir, 'ocpp-stations.ts')
const STEPS = [500, 1_000, 2_000]
const WORKERS = 4
/** Each station sends MeterValues this often during the sustained phase. */
const PERIOD_MS = 10_000
const ROUNDS = 3
/** Quiet time after opening stations before RSS is read. */
const SETTLE_MS = 3_000
/** Idle CPU is measured from this long after opening until the RSS has been read. */
const IDLE_CPU_AFTER_MS = 500
const RSS_SAMPLES = 5
const RSS_SAMPLE_GAP_MS = 200
/** Pause between the sustained phase and the burst. */
const GAP_MS = 1_000
const READY_POLL_MS = 20
const READY_TIMEOUT_MS = 30_000
const WORKER_TIMEOUT_MS = 120_000
/** Raise the soft fd limit to the hard one (a non-root container cannot go further). */
const WITH_FD_LIMIT = 'ulimit -n hard 2>/dev/null; exec "$0" "$@"'
const TARGETS = { stations: 2_000, p99_ms: 50, rss_kib_per_connection: 100 }

// ---------------------------------------------------------------------------------------------
// Worker processes

interface Event {
  ev: string
  [key: string]: unknown
}

interface Opened extends Event {
  ok: number
  failed: number
  errors: string[]
  connectMs: number[]
  bootMs: number[]
  elapsedMs: number
}

interface Calls extends Event {
  sent: number
  ok: number
  failed: number
  errors: string[]
  latencies: number[]
  firstSentAt: number
  lastDoneAt: number
  maxTimerLagMs?: number
  issueMs?: number
}

/** One ocpp-stations.ts process: commands on stdin, JSON lines back on stdout. */
class StationWorker {
  disconnects = 0
  samplesPerMessage = 0
  private readonly waiting: { ev: string; resolve: (event: Event) => void; reject: (e: Error) => void }[] = []
  private exitError: Error | undefined

  private constructor(
    readonly index: number,
    private readonly child: ChildProcess,
    logFile: string,
  ) {
    const lines = createInterface({ input: child.stdout! })
    lines.on('line', (line) => this.onLine(line))
    child.once('exit', (code, signal) => {
      this.exitError = new Error(`station worker ${index} exited (${code ?? signal}):\n${tail(logFile)}`)
      for (const waiter of this.waiting.splice(0)) waiter.reject(this.exitError)
    })
  }

  static async start(scope: Scope, index: number, endpoint: string, logFile: string): Promise<StationWorker> {
    const fd = openSync(logFile, 'a')
    const child = spawn('bash', ['-c', WITH_FD_LIMIT, process.execPath, WORKER_SCRIPT, endpoint], {
      cwd: root,
      detached: true,
      stdio: ['pipe', 'pipe', fd],
    })
    closeSync(fd)
    const worker = new StationWorker(index, child, logFile)
    scope.defer(`stop station worker ${index}`, () => worker.stop())
    const ready = await worker.next('ready')
    worker.samplesPerMessage = ready.samplesPerMessage as number
    return worker
  }

  get pid(): number {
    return this.child.pid ?? 0
  }

  /** Send a command and wait for the event that answers it. */
  request<T extends Event>(command: Record<string, unknown>, ev: string): Promise<T> {
    const answer = this.next(ev) as Promise<T>
    this.child.stdin!.write(`${JSON.stringify(command)}\n`)
    return answer
  }

  private next(ev: string): Promise<Event> {
    if (this.exitError) return Promise.reject(this.exitError)
    return new Promise<Event>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`station worker ${this.index}: no '${ev}' after ${WORKER_TIMEOUT_MS} ms`)),
        WORKER_TIMEOUT_MS,
      )
      this.waiting.push({
        ev,
        resolve: (event) => {
          clearTimeout(timer)
          resolve(event)
        },
        reject: (error) => {
          clearTimeout(timer)
          reject(error)
        },
      })
    })
  }

  private onLine(line: string): void {
    let event: Event
    try {
      event = JSON.parse(line) as Event
    } catch {
      log(`station worker ${this.index}: ${line.slice(0, 300)}`)
      return
    }
    if (event.ev === 'disconnected') {
      this.disconnects += 1
      if (this.disconnects <= 3)
        log(`station worker ${this.index}: station disconnected ${JSON.stringify(event)}`)
      return
    }
    if (event.ev === 'error') {
      for (const waiter of this.waiting.splice(0)) waiter.reject(new Error(String(event.message)))
      return
    }
    const at = this.waiting.findIndex((waiter) => waiter.ev === event.ev)
    if (at === -1) return
    this.waiting.splice(at, 1)[0]!.resolve(event)
  }

  /** Ask the worker to close its stations; kill its process group if it does not exit. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()))
    try {
      this.child.stdin!.write(`${JSON.stringify({ cmd: 'close' })}\n`)
    } catch {
      // stdin already gone
    }
    const done = await Promise.race([exited.then(() => true), Bun.sleep(8_000).then(() => false)])
    if (done) return
    log(`station worker ${this.index} (pid ${this.pid}) did not exit: SIGKILL`)
    try {
      process.kill(-this.pid, 'SIGKILL')
    } catch {
      // already gone
    }
    await exited
  }
}

// ---------------------------------------------------------------------------------------------
// The node

interface RunningNode {
  child: Child
  api: string
  token: string
  natsPid: number
}

async function startNode(scope: Scope, dataDir: string, logFile: string): Promise<RunningNode> {
  let token: string | undefined
  const { child, api } = await launchNode(scope, {
    label: 'oe-node',
    command: 'bash',
    args: ['-c', WITH_FD_LIMIT, NODE_BINARY, ...startArgs(dataDir)],
    dataDir,
    logFile,
    pollMs: READY_POLL_MS,
    timeoutMs: READY_TIMEOUT_MS,
    ready: async (url) => {
      token ??= (await readFile(join(dataDir, 'admin.token'), 'utf8').catch(() => '')).trim() || undefined
      if (token === undefined) return false
      // Ready once the OCPP plugin says so (it listens by then).
      const response = await fetch(`${url}/v1/plugins`, { headers: bearer(token) })
      if (response.status !== 200) {
        await response.arrayBuffer()
        return false
      }
      const plugins = (await response.json()) as { id: string; ready?: boolean }[]
      return plugins.find((plugin) => plugin.id === 'ocpp')?.ready === true
    },
  })
  return { child, api, token: token!, natsPid: await readNatsPid(dataDir) }
}

async function connectNodeNats(node: RunningNode, dataDir: string): Promise<NatsConnection> {
  const response = await fetch(`${node.api}/v1/status`, {
    headers: bearer(node.token),
  })
  const status = (await response.json()) as { nats?: { url?: string } }
  const servers = status.nats?.url
  if (!servers) throw new Error(`/v1/status has no nats.url: ${JSON.stringify(status)}`)
  const auth = JSON.parse(await readFile(join(dataDir, 'nats', 'auth.json'), 'utf8')) as {
    user: string
    password: string
  }
  return connect({ servers, user: auth.user, pass: auth.password, name: 'oe-bench-ocpp' })
}

// ---------------------------------------------------------------------------------------------
// /proc

/** Open file descriptors of a process (0 when unreadable). */
function fdCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length
  } catch {
    return 0
  }
}

/** Median of a few VmRSS readings of the node and of its nats-server. */
async function sampleRss(node: RunningNode): Promise<{ node: number; nats: number; total: number }> {
  const nodes: number[] = []
  const nats: number[] = []
  for (let i = 0; i < RSS_SAMPLES; i++) {
    if (i > 0) await Bun.sleep(RSS_SAMPLE_GAP_MS)
    nodes.push(rssKiB(node.child.pid))
    nats.push(rssKiB(node.natsPid))
  }
  const mid = (values: number[]) => percentile(values, 50)
  return { node: mid(nodes), nats: mid(nats), total: mid(nodes) + mid(nats) }
}

// ---------------------------------------------------------------------------------------------
// The suite

interface Step {
  stations: number
  connected: number
  connect_failures: number
  connect_p99_ms: number
  boot_p99_ms: number
  open_s: number
  rss_idle_kib: number
  rss_node_idle_kib: number
  rss_nats_idle_kib: number
  rss_kib_per_connection: number
  rss_node_kib_per_connection: number
  rss_marginal_kib_per_connection: number
  offered_msgs_per_s: number
  msgs_per_s: number
  sustained_sent: number
  sustained_errors: number
  p50_ms: number
  p99_ms: number
  max_ms: number
  max_timer_lag_ms: number
  burst_sent: number
  burst_errors: number
  burst_p50_ms: number
  burst_p99_ms: number
  burst_max_ms: number
  burst_msgs_per_s: number
  /** Longest time a worker took to hand all its burst calls to ocpp-rpc. */
  burst_issue_max_ms: number
  burst_node_cpu_ms_per_msg: number
  burst_nats_cpu_ms_per_msg: number
  burst_workers_cpu_ms_per_msg: number
  rss_after_traffic_kib: number
  node_cpu_ms_per_msg: number
  nats_cpu_ms_per_msg: number
  workers_cpu_ms_per_msg: number
  node_cpu_pct: number
  /** With every station connected and silent (pings, timers, GC). */
  node_idle_cpu_pct: number
  nats_idle_cpu_pct: number
  /** Sustained node CPU less what it spends idle, per message. */
  node_net_cpu_ms_per_msg: number
  node_fds: number
  telemetry_expected: number
  telemetry_stored: number
  disconnects: number
}

function mergeCalls(results: Calls[]): {
  sent: number
  ok: number
  failed: number
  errors: string[]
  latencies: number[]
  firstSentAt: number
  lastDoneAt: number
} {
  return {
    sent: results.reduce((sum, r) => sum + r.sent, 0),
    ok: results.reduce((sum, r) => sum + r.ok, 0),
    failed: results.reduce((sum, r) => sum + r.failed, 0),
    errors: results.flatMap((r) => r.errors),
    latencies: results.flatMap((r) => r.latencies),
    firstSentAt: Math.min(...results.map((r) => r.firstSentAt)),
    lastDoneAt: Math.max(...results.map((r) => r.lastDoneAt)),
  }
}

export async function ocppSuite(scope: Scope): Promise<SuiteResult> {
  await ensureBinary()
  const loadBefore = loadavg()[0]!
  const work = await scope.tempDir('ocpp')
  const dataDir = join(work, 'data')
  const port = await freePort()
  await mkdir(dataDir, { recursive: true, mode: 0o700 })
  await writeFile(
    join(dataDir, 'config.toml'),
    `[plugins.ocpp]\nenabled = true\nlisten = "127.0.0.1:${port}"\nauto_accept = true\n`,
    { mode: 0o600 },
  )
  const node = await startNode(scope, dataDir, join(work, 'node.log'))
  log(`node up (pid ${node.child.pid}, nats-server ${node.natsPid}), OCPP on 127.0.0.1:${port}`)
  const nc = await connectNodeNats(node, dataDir)
  scope.defer('close the NATS connection', () => nc.close())
  const jsm = await jetstreamManager(nc)
  const storedTelemetry = async () => (await jsm.streams.info('OE_TEL')).state.messages

  const endpoint = `ws://127.0.0.1:${port}/ocpp`
  const workers = await Promise.all(
    Array.from({ length: WORKERS }, (_, i) =>
      StationWorker.start(scope, i, endpoint, join(work, `stations-${i}.log`)),
    ),
  )
  const samples = workers[0]!.samplesPerMessage
  const assertNode = () => {
    if (!node.child.running)
      throw new Error(`oe-node exited (${JSON.stringify(node.child.exit)}):\n${node.child.tail()}`)
  }

  await Bun.sleep(SETTLE_MS)
  const rss0 = await sampleRss(node)
  log(`idle node, no station: RSS ${show(rss0.node)} KiB + nats-server ${show(rss0.nats)} KiB`)

  const steps: Step[] = []
  let opened = 0
  let previousRss = rss0.total
  for (const target of STEPS) {
    assertNode()
    // 1. Open the new stations, spread over the workers.
    const ids: number[][] = workers.map(() => [])
    for (let id = opened; id < target; id++) ids[id % WORKERS]!.push(id)
    const openStarted = performance.now()
    const openResults = await Promise.all(
      workers.map((worker, i) => worker.request<Opened>({ cmd: 'open', ids: ids[i] }, 'opened')),
    )
    const openS = (performance.now() - openStarted) / 1000
    const failed = openResults.reduce((sum, r) => sum + r.failed, 0)
    const connected = opened + openResults.reduce((sum, r) => sum + r.ok, 0)
    const connectMs = openResults.flatMap((r) => r.connectMs)
    const bootMs = openResults.flatMap((r) => r.bootMs)
    const nodeFds = fdCount(node.child.pid)
    log(
      `${target} stations: ${connected} connected and booted in ${openS.toFixed(1)} s` +
        (failed > 0
          ? `, ${failed} failed: ${openResults
              .flatMap((r) => r.errors)
              .slice(0, 3)
              .join('; ')}`
          : '') +
        ` (node fds ${nodeFds})`,
    )
    if (failed > 0) {
      log(`could not hold ${target} stations on this machine: stopping at ${opened}`)
      break
    }
    opened = target
    const telBefore = await storedTelemetry()
    let warmupOk = 0
    if (steps.length === 0) {
      // The node's first MeterValues compile its code paths: one unmeasured round first, so the
      // first step is not the only one that pays for it (in latency and in RSS).
      const warmup = mergeCalls(
        await Promise.all(workers.map((worker) => worker.request<Calls>({ cmd: 'burst' }, 'burst'))),
      )
      warmupOk = warmup.ok
      log(`warm-up: ${warmup.ok} MeterValues in ${show(warmup.lastDoneAt - warmup.firstSentAt)} ms`)
    }

    // 2. Idle RSS, and the CPU the node spends with every station connected and silent.
    const watched = [node.child.pid, node.natsPid, ...workers.map((w) => w.pid)]
    await Bun.sleep(IDLE_CPU_AFTER_MS)
    const idleStarted = performance.now()
    const idleBefore = watched.map(cpuMs)
    await Bun.sleep(SETTLE_MS - IDLE_CPU_AFTER_MS)
    const rss = await sampleRss(node)
    const idleWallMs = performance.now() - idleStarted
    const [idleNodeCpu, idleNatsCpu] = watched.map((pid, i) => cpuMs(pid) - idleBefore[i]!)
    const disconnectsBefore = workers.reduce((sum, w) => sum + w.disconnects, 0)

    // 3. Sustained MeterValues.
    const cpuBefore = watched.map(cpuMs)
    const startAt = Date.now() + 500
    const sustainedAll = await Promise.all(
      workers.map((worker) =>
        worker.request<Calls>(
          { cmd: 'sustain', startAt, periodMs: PERIOD_MS, rounds: ROUNDS, total: target },
          'sustained',
        ),
      ),
    )
    const cpuUsed = watched.map((pid, i) => cpuMs(pid) - cpuBefore[i]!)
    const sustained = mergeCalls(sustainedAll)
    const sustainedS = (sustained.lastDoneAt - startAt) / 1000
    const msgsPerS = sustained.ok / sustainedS
    const p99 = percentile(sustained.latencies, 99)
    log(
      `${target} stations sustained: ${show(msgsPerS)} msgs/s of ${show(target / (PERIOD_MS / 1000))} offered, ` +
        `p50 ${show(percentile(sustained.latencies, 50))} ms, p99 ${show(p99)} ms, ${sustained.failed} errors`,
    )
    if (sustained.failed > 0) log(`sustained errors: ${sustained.errors.slice(0, 3).join('; ')}`)

    // 4. Burst: every station at once.
    await Bun.sleep(GAP_MS)
    const burstCpuBefore = watched.map(cpuMs)
    const burstAll = await Promise.all(
      workers.map((worker) => worker.request<Calls>({ cmd: 'burst' }, 'burst')),
    )
    const burst = mergeCalls(burstAll)
    const [burstNodeCpu, burstNatsCpu, ...burstWorkerCpu] = watched.map(
      (pid, i) => cpuMs(pid) - burstCpuBefore[i]!,
    )
    const burstS = (burst.lastDoneAt - burst.firstSentAt) / 1000
    log(
      `${target} stations burst: ${burst.ok} answered in ${show(burstS * 1000)} ms, ` +
        `p99 ${show(percentile(burst.latencies, 99))} ms, ${burst.failed} errors`,
    )
    if (burst.failed > 0) log(`burst errors: ${burst.errors.slice(0, 3).join('; ')}`)

    // 5. Everything answered is stored (the node answers MeterValues after JetStream acked).
    await Bun.sleep(500)
    const stored = (await storedTelemetry()) - telBefore
    const expected = (warmupOk + sustained.ok + burst.ok) * samples
    const rssAfter = await sampleRss(node)
    assertNode()

    const messages = sustained.sent
    const [nodeCpu, natsCpu, ...workerCpu] = cpuUsed
    steps.push({
      stations: target,
      connected,
      connect_failures: failed,
      connect_p99_ms: percentile(connectMs, 99),
      boot_p99_ms: percentile(bootMs, 99),
      open_s: openS,
      rss_idle_kib: rss.total,
      rss_node_idle_kib: rss.node,
      rss_nats_idle_kib: rss.nats,
      rss_kib_per_connection: (rss.total - rss0.total) / target,
      rss_node_kib_per_connection: (rss.node - rss0.node) / target,
      rss_marginal_kib_per_connection: (rss.total - previousRss) / (target - (steps.at(-1)?.stations ?? 0)),
      offered_msgs_per_s: target / (PERIOD_MS / 1000),
      msgs_per_s: msgsPerS,
      sustained_sent: sustained.sent,
      sustained_errors: sustained.failed,
      p50_ms: percentile(sustained.latencies, 50),
      p99_ms: p99,
      max_ms: Math.max(...sustained.latencies),
      max_timer_lag_ms: Math.max(...sustainedAll.map((r) => r.maxTimerLagMs ?? 0)),
      burst_sent: burst.sent,
      burst_errors: burst.failed,
      burst_p50_ms: percentile(burst.latencies, 50),
      burst_p99_ms: percentile(burst.latencies, 99),
      burst_max_ms: Math.max(...burst.latencies),
      burst_msgs_per_s: burst.ok / burstS,
      burst_issue_max_ms: Math.max(...burstAll.map((r) => r.issueMs ?? 0)),
      burst_node_cpu_ms_per_msg: burstNodeCpu! / burst.sent,
      burst_nats_cpu_ms_per_msg: burstNatsCpu! / burst.sent,
      burst_workers_cpu_ms_per_msg: burstWorkerCpu.reduce((sum, v) => sum + v, 0) / burst.sent,
      rss_after_traffic_kib: rssAfter.total,
      node_cpu_ms_per_msg: nodeCpu! / messages,
      nats_cpu_ms_per_msg: natsCpu! / messages,
      workers_cpu_ms_per_msg: workerCpu.reduce((sum, v) => sum + v, 0) / messages,
      node_cpu_pct: (nodeCpu! / (sustainedS * 1000)) * 100,
      node_idle_cpu_pct: (idleNodeCpu! / idleWallMs) * 100,
      nats_idle_cpu_pct: (idleNatsCpu! / idleWallMs) * 100,
      node_net_cpu_ms_per_msg: (nodeCpu! - (idleNodeCpu! / idleWallMs) * sustainedS * 1000) / messages,
      node_fds: nodeFds,
      telemetry_expected: expected,
      telemetry_stored: stored,
      disconnects: workers.reduce((sum, w) => sum + w.disconnects, 0) - disconnectsBefore,
    })
    previousRss = rss.total
    if (stored !== expected)
      log(`WARNING: ${expected} telemetry records answered but OE_TEL grew by ${stored}`)
  }
  if (steps.length === 0) throw new Error(`not even ${STEPS[0]} stations could connect`)

  // Close every station and see what the node gives back.
  await Promise.all(workers.map((worker) => worker.stop()))
  await Bun.sleep(SETTLE_MS)
  const rssClosed = await sampleRss(node)
  assertNode()

  return report(steps, rss0, rssClosed, [loadBefore, loadavg()[0]!])
}

function report(
  steps: Step[],
  rss0: { node: number; nats: number; total: number },
  rssClosed: { node: number; nats: number; total: number },
  load: [number, number],
): SuiteResult {
  const last = steps.at(-1)!
  const mark = (ok: boolean): string => (ok ? 'ok' : 'MISSED')
  const telemetryOk = steps.every((step) => step.telemetry_stored === step.telemetry_expected)
  const roundedSteps = steps.map((step) =>
    Object.fromEntries(Object.entries(step).map(([key, value]) => [key, round(value)])),
  )
  const metrics = {
    stations: last.stations,
    p99_ms: last.p99_ms,
    p50_ms: last.p50_ms,
    msgs_per_s: last.msgs_per_s,
    offered_msgs_per_s: last.offered_msgs_per_s,
    burst_p99_ms: last.burst_p99_ms,
    burst_msgs_per_s: last.burst_msgs_per_s,
    rss_kib_per_connection: last.rss_kib_per_connection,
    rss_node_kib_per_connection: last.rss_node_kib_per_connection,
    rss_idle_no_stations_kib: rss0.total,
    rss_after_close_kib: rssClosed.total,
    errors: steps.reduce((sum, s) => sum + s.sustained_errors + s.burst_errors + s.connect_failures, 0),
    telemetry_verified: telemetryOk ? 1 : 0,
    max_timer_lag_ms: Math.max(...steps.map((s) => s.max_timer_lag_ms)),
    load_avg_1m_start: load[0],
    load_avg_1m_end: load[1],
    workers: WORKERS,
    period_s: PERIOD_MS / 1000,
    rounds: ROUNDS,
    // Not a number: writeResult passes it through untouched (its entries are rounded here).
    steps: roundedSteps,
  } as unknown as Numbers

  const stepTable = markdownTable(
    [
      'stations',
      'msgs/s (offered)',
      'p50 / p99 ms',
      'burst p99 ms',
      'burst msgs/s',
      'errors',
      'RSS KiB/conn: avg / marginal',
      'node CPU ms/msg sustained / burst',
      'telemetry stored/expected',
    ],
    steps.map((s) => [
      show(s.stations),
      `${show(s.msgs_per_s)} (${show(s.offered_msgs_per_s)})`,
      `${show(s.p50_ms)} / ${show(s.p99_ms)}`,
      show(s.burst_p99_ms),
      show(s.burst_msgs_per_s),
      show(s.sustained_errors + s.burst_errors + s.connect_failures),
      `${show(s.rss_kib_per_connection)} / ${show(s.rss_marginal_kib_per_connection)}`,
      `${show(s.node_cpu_ms_per_msg)} / ${show(s.burst_node_cpu_ms_per_msg)}`,
      `${show(s.telemetry_stored)} / ${show(s.telemetry_expected)}`,
    ]),
  )
  console.log(`\n### ocpp: scaling\n\n${stepTable}`)

  const stationsRow: TableRow = {
    metric: 'stations held (all connected and booted)',
    value: show(last.stations),
    reference: `${show(TARGETS.stations)} ${mark(last.stations >= TARGETS.stations)}`,
  }
  const p99Row: TableRow = {
    metric: `p99 CALL→CALLRESULT, MeterValues every ${PERIOD_MS / 1000} s per station`,
    value: show(last.p99_ms, 'ms'),
    reference: `≤ ${TARGETS.p99_ms} ms ${mark(last.p99_ms <= TARGETS.p99_ms)}`,
  }
  const rssRow: TableRow = {
    metric: 'RSS per idle connection (node + its nats-server)',
    value: show(last.rss_kib_per_connection, 'KiB'),
    reference: `≤ ${TARGETS.rss_kib_per_connection} KiB ${mark(last.rss_kib_per_connection <= TARGETS.rss_kib_per_connection)}`,
  }
  const table: TableRow[] = [
    stationsRow,
    p99Row,
    { metric: 'p50 CALL→CALLRESULT', value: show(last.p50_ms, 'ms'), reference: '' },
    {
      metric: 'sustained MeterValues achieved (offered)',
      value: `${show(last.msgs_per_s, 'msgs/s')} (${show(last.offered_msgs_per_s)})`,
      reference: '',
    },
    {
      metric: `burst: all ${show(last.stations)} stations at once, p99 / max`,
      value: `${show(last.burst_p99_ms)} / ${show(last.burst_max_ms)} ms`,
      reference: `${show(last.burst_msgs_per_s, 'msgs/s')}`,
    },
    rssRow,
    {
      metric: `RSS per idle connection, marginal (${show(steps.at(-2)?.stations ?? 0)} → ${show(last.stations)})`,
      value: show(last.rss_marginal_kib_per_connection, 'KiB'),
      reference: '',
    },
    {
      metric: 'RSS per idle connection, node process only',
      value: show(last.rss_node_kib_per_connection, 'KiB'),
      reference: '',
    },
    {
      metric: 'RSS: no station / idle with all / after all closed (node + nats-server)',
      value: `${show(rss0.total / 1024)} / ${show(last.rss_idle_kib / 1024)} / ${show(rssClosed.total / 1024)} MiB`,
      reference: '',
    },
    {
      metric: 'connect / boot p99 (while opening the last step)',
      value: `${show(last.connect_p99_ms)} / ${show(last.boot_p99_ms)} ms`,
      reference: `${show(last.open_s)} s to open ${show(last.stations - (steps.at(-2)?.stations ?? 0))}`,
    },
    {
      metric: 'CPU per MeterValues: node / nats-server / station workers',
      value: `${show(last.node_cpu_ms_per_msg)} / ${show(last.nats_cpu_ms_per_msg)} / ${show(last.workers_cpu_ms_per_msg)} ms`,
      reference: `node at ${show(last.node_cpu_pct)} % of a core (${show(last.node_idle_cpu_pct)} % idle); net ${show(last.node_net_cpu_ms_per_msg)} ms/msg`,
    },
    {
      metric: 'CPU per MeterValues in the burst: node / nats-server / station workers',
      value: `${show(last.burst_node_cpu_ms_per_msg)} / ${show(last.burst_nats_cpu_ms_per_msg)} / ${show(last.burst_workers_cpu_ms_per_msg)} ms`,
      reference: `workers took up to ${show(last.burst_issue_max_ms)} ms to issue their calls`,
    },
    {
      metric: 'telemetry in OE_TEL = answered MeterValues × 3',
      value: telemetryOk ? 'yes' : 'NO',
      reference: steps.map((s) => `${show(s.telemetry_stored)}/${show(s.telemetry_expected)}`).join(', '),
    },
    {
      metric: 'station workers: latest timer (sustained) / machine load average (1 min, start → end)',
      value: `${show(last.max_timer_lag_ms, 'ms')} / ${show(load[0])} → ${show(load[1])}`,
      reference: `late timers mean the load generator itself was starved (${machine().cpus} cores)`,
    },
    {
      metric: 'errors (connect, call) / unexpected disconnects',
      value: `${show(metrics.errors as unknown as number)} / ${show(steps.reduce((sum, s) => sum + s.disconnects, 0))}`,
      reference: '',
    },
  ]
  return {
    suite: 'ocpp',
    when: new Date().toISOString(),
    machine: machine(),
    metrics,
    baselines: {},
    ratios: {},
    targets: TARGETS,
    table,
    headline: [stationsRow, p99Row, rssRow],
  }
}

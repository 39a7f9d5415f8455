/**
 * The `ingest` suite (ARCHITECTURE §11): cold start of the compiled binary to a 200 from
 * /readyz, HTTP ingest throughput with batches of 1,000 records, and, in the same run, raw nats.js
 * publishes into a JetStream stream on a nats-server of our own as the baseline.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  DiscardPolicy,
  type JetStreamClient,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from '@nats-io/jetstream'
import { createInbox, type NatsConnection, nanos } from '@nats-io/nats-core'
import { connect } from '@nats-io/transport-node'
import {
  bearer,
  type Child,
  ensureBinary,
  freePort,
  type LaunchedNode,
  launchNode,
  log,
  machine,
  median,
  NODE_BINARY,
  percentile,
  processCpuMs,
  readAdminToken,
  readNatsPid,
  type Scope,
  type SuiteResult,
  show,
  startArgs,
  warnUncleanExit,
} from './common.ts'

const COLD_RUNS = 5
const READY_POLL_MS = 5
const READY_TIMEOUT_MS = 30_000
const BATCH = 1_000
const WARMUP_RECORDS = 20_000
const RECORDS = 300_000
const CONCURRENCY = 4
const RIDS = 500
const BASELINE_PAYLOAD_BYTES = 128
const CORE_FLUSH_EVERY = 10_000
const TARGETS = { records_per_s: 100_000, cold_start_ms: 1_500 }

export async function ingestSuite(scope: Scope): Promise<SuiteResult> {
  await ensureBinary()
  const work = await scope.tempDir('ingest')
  const dataDir = join(work, 'data')

  // 1. Cold start: a fresh data dir, then restarts of the same dir.
  const coldMs: number[] = []
  const shutdownMs: number[] = []
  for (let i = 0; i < COLD_RUNS; i++) {
    const node = await startNode(scope, dataDir, join(work, `node-${i}.log`))
    coldMs.push(node.readyMs)
    shutdownMs.push(await stopNode(node))
    log(`cold start ${i + 1}/${COLD_RUNS}: ${Math.round(node.readyMs)} ms to /readyz 200`)
  }

  // 2. HTTP ingest into the compiled binary.
  const node = await startNode(scope, dataDir, join(work, 'node-ingest.log'))
  const token = await readAdminToken(dataDir)
  const natsPid = await readNatsPid(dataDir)
  const http = await httpIngest(node.api, token, [node.child.pid, natsPid])
  const [nodeCpuMs, natsCpuMs] = http.cpuMs
  const stored = await storedTelemetry(node.api, token, dataDir)
  if (stored !== WARMUP_RECORDS + RECORDS) {
    throw new Error(`the node accepted ${WARMUP_RECORDS + RECORDS} records but OE_TEL holds ${stored}`)
  }
  await stopNode(node)

  // 3. Baselines, with the node stopped so they have the machine to themselves.
  const baseline = await natsBaseline(scope, work)

  const metrics = {
    cold_start_ms: median(coldMs.slice(1)),
    cold_start_first_ms: coldMs[0]!,
    cold_start_max_ms: Math.max(...coldMs.slice(1)),
    shutdown_ms: median(shutdownMs),
    records_per_s: http.recordsPerS,
    batch_p50_ms: percentile(http.latencies, 50),
    batch_p99_ms: percentile(http.latencies, 99),
    batch_max_ms: Math.max(...http.latencies),
    records: RECORDS,
    batch_size: BATCH,
    concurrency: CONCURRENCY,
    record_json_bytes: http.recordBytes,
    // CPU per 1,000 records while measuring (2 cores: 2,000 ms of CPU per wall second at most).
    node_cpu_ms_per_1k: (nodeCpuMs! / RECORDS) * 1000,
    nats_server_cpu_ms_per_1k: (natsCpuMs! / RECORDS) * 1000,
    client_cpu_ms_per_1k: (http.clientCpuMs / RECORDS) * 1000,
    stored_records: stored,
  }
  const baselines = {
    nats_publish_records_per_s: baseline.jetstreamPerS,
    nats_pipelined_ack_publish_records_per_s: baseline.pipelinedPerS,
    nats_core_publish_records_per_s: baseline.corePerS,
  }
  const ratios = {
    vs_nats_publish: metrics.records_per_s / baselines.nats_publish_records_per_s,
    vs_nats_pipelined_ack_publish: metrics.records_per_s / baselines.nats_pipelined_ack_publish_records_per_s,
    vs_nats_core_publish: metrics.records_per_s / baselines.nats_core_publish_records_per_s,
  }
  const mark = (ok: boolean): string => (ok ? 'ok' : 'MISSED')
  const coldRow = {
    metric: 'cold start to /readyz 200 (median of 4 restarts)',
    value: show(metrics.cold_start_ms, 'ms'),
    reference: `≤ ${show(TARGETS.cold_start_ms, 'ms')} ${mark(metrics.cold_start_ms <= TARGETS.cold_start_ms)}`,
  }
  const ingestRow = {
    metric: `HTTP ingest (JSON, batches of ${show(BATCH)}, ${CONCURRENCY} in flight)`,
    value: show(metrics.records_per_s, 'records/s'),
    reference: `≥ ${show(TARGETS.records_per_s, 'records/s')} ${mark(metrics.records_per_s >= TARGETS.records_per_s)}`,
  }
  const ratioRow = {
    metric: 'ratio vs_nats_publish',
    value: `${show(ratios.vs_nats_publish)}×`,
    reference: 'HTTP ingest / JetStream acked publish',
  }
  return {
    suite: 'ingest',
    when: new Date().toISOString(),
    machine: machine(),
    metrics,
    baselines,
    ratios,
    targets: TARGETS,
    table: [
      coldRow,
      {
        metric: 'cold start, first run (fresh data dir)',
        value: show(metrics.cold_start_first_ms, 'ms'),
        reference: '',
      },
      { metric: 'shutdown after SIGTERM (median)', value: show(metrics.shutdown_ms, 'ms'), reference: '' },
      ingestRow,
      { metric: 'batch latency p50', value: show(metrics.batch_p50_ms, 'ms'), reference: '' },
      { metric: 'batch latency p99', value: show(metrics.batch_p99_ms, 'ms'), reference: '' },
      {
        metric: 'CPU per 1,000 records: node / its nats-server / bench client',
        value: `${show(metrics.node_cpu_ms_per_1k)} / ${show(metrics.nats_server_cpu_ms_per_1k)} / ${show(metrics.client_cpu_ms_per_1k)} ms`,
        reference: '',
      },
      {
        metric: 'nats.js JetStream publish (acked, windows of 1,000)',
        value: show(baselines.nats_publish_records_per_s, 'records/s'),
        reference: 'baseline',
      },
      {
        metric: `nats.js pipelined acked publish (reply per window, ${CONCURRENCY} windows in flight)`,
        value: show(baselines.nats_pipelined_ack_publish_records_per_s, 'records/s'),
        reference: 'baseline',
      },
      {
        metric: 'nats.js core publish + flush (no acks)',
        value: show(baselines.nats_core_publish_records_per_s, 'records/s'),
        reference: 'baseline',
      },
      ratioRow,
      {
        metric: 'ratio vs_nats_pipelined_ack_publish',
        value: `${show(ratios.vs_nats_pipelined_ack_publish)}×`,
        reference: 'HTTP ingest / pipelined acked publish',
      },
      {
        metric: 'ratio vs_nats_core_publish',
        value: `${show(ratios.vs_nats_core_publish)}×`,
        reference: 'HTTP ingest / core publish',
      },
    ],
    headline: [coldRow, ingestRow, ratioRow],
  }
}

// ---------------------------------------------------------------------------------------------
// The node

function startNode(scope: Scope, dataDir: string, logFile: string): Promise<LaunchedNode> {
  return launchNode(scope, {
    label: 'oe-node',
    command: NODE_BINARY,
    args: startArgs(dataDir),
    dataDir,
    logFile,
    pollMs: READY_POLL_MS,
    timeoutMs: READY_TIMEOUT_MS,
  })
}

/** SIGTERM and wait; returns how long the node took to exit. */
async function stopNode(node: LaunchedNode): Promise<number> {
  const started = performance.now()
  const exit = await node.child.stop()
  const elapsed = performance.now() - started
  warnUncleanExit('oe-node', exit)
  return elapsed
}

// ---------------------------------------------------------------------------------------------
// HTTP ingest

interface HttpIngestResult {
  recordsPerS: number
  latencies: number[]
  recordBytes: number
  /** CPU time of the watched processes during the measured run. */
  cpuMs: number[]
  clientCpuMs: number
}

function buildBodies(batches: number, firstIndex: number): { bodies: Uint8Array[]; bytes: number } {
  const encoder = new TextEncoder()
  const now = Date.now()
  const bodies: Uint8Array[] = []
  let bytes = 0
  let index = firstIndex
  for (let b = 0; b < batches; b++) {
    const records: string[] = new Array(BATCH)
    for (let r = 0; r < BATCH; r++, index++) {
      const v = Math.random() * 10_000
      records[r] = `{"kind":"meter","rid":"m${index % RIDS}","q":"power","v":${v},"t":${now}}`
      bytes += records[r]!.length
    }
    bodies.push(encoder.encode(`[${records.join(',')}]`))
  }
  return { bodies, bytes }
}

async function httpIngest(api: string, token: string, watched: number[]): Promise<HttpIngestResult> {
  const url = `${api}/v1/telemetry`
  const headers = { 'content-type': 'application/json', ...bearer(token) }
  const warmup = buildBodies(WARMUP_RECORDS / BATCH, 0)
  const measured = buildBodies(RECORDS / BATCH, WARMUP_RECORDS)

  const post = async (body: Uint8Array): Promise<number> => {
    const started = performance.now()
    const response = await fetch(url, { method: 'POST', headers, body, signal: AbortSignal.timeout(30_000) })
    const text = await response.text()
    const elapsed = performance.now() - started
    let answer: { accepted?: number; rejected?: number } = {}
    try {
      answer = JSON.parse(text) as typeof answer
    } catch {
      // Reported below.
    }
    if (response.status !== 200 || answer.accepted !== BATCH || answer.rejected !== 0) {
      throw new Error(`POST /v1/telemetry answered ${response.status}: ${text.slice(0, 500)}`)
    }
    return elapsed
  }

  const drive = async (bodies: Uint8Array[]): Promise<{ elapsedMs: number; latencies: number[] }> => {
    const latencies: number[] = new Array(bodies.length)
    let next = 0
    const started = performance.now()
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        for (let i = next++; i < bodies.length; i = next++) latencies[i] = await post(bodies[i]!)
      }),
    )
    return { elapsedMs: performance.now() - started, latencies }
  }

  log(`HTTP ingest: ${WARMUP_RECORDS.toLocaleString('en-US')} records of warm-up`)
  await drive(warmup.bodies)
  log(`HTTP ingest: ${RECORDS.toLocaleString('en-US')} records, ${CONCURRENCY} requests in flight`)
  const cpuBefore = watched.map(processCpuMs)
  const clientBefore = process.cpuUsage()
  const { elapsedMs, latencies } = await drive(measured.bodies)
  const client = process.cpuUsage(clientBefore)
  const cpuMs = watched.map((pid, i) => processCpuMs(pid) - cpuBefore[i]!)
  const recordsPerS = RECORDS / (elapsedMs / 1000)
  log(`HTTP ingest: ${Math.round(recordsPerS).toLocaleString('en-US')} records/s`)
  return {
    recordsPerS,
    latencies,
    recordBytes: measured.bytes / RECORDS,
    cpuMs,
    clientCpuMs: (client.user + client.system) / 1000,
  }
}

/** How many messages the node's OE_TEL stream holds (read over its own NATS). */
async function storedTelemetry(api: string, token: string, dataDir: string): Promise<number> {
  const response = await fetch(`${api}/v1/status`, { headers: bearer(token) })
  const status = (await response.json()) as { nats?: { url?: string } }
  const servers = status.nats?.url
  if (!servers) throw new Error(`/v1/status has no nats.url: ${JSON.stringify(status)}`)
  const auth = JSON.parse(await readFile(join(dataDir, 'nats', 'auth.json'), 'utf8')) as {
    user: string
    password: string
  }
  const nc = await connect({ servers, user: auth.user, pass: auth.password, name: 'oe-bench' })
  try {
    const jsm = await jetstreamManager(nc)
    return (await jsm.streams.info('OE_TEL')).state.messages
  } finally {
    await nc.close()
  }
}

// ---------------------------------------------------------------------------------------------
// Baselines: raw nats.js against a nats-server of our own

async function connectWhenUp(servers: string, server: Child): Promise<NatsConnection> {
  const deadline = performance.now() + 10_000
  for (;;) {
    try {
      return await connect({ servers, name: 'oe-bench-baseline', timeout: 1_000 })
    } catch (error) {
      if (!server.running) throw new Error(`nats-server exited during start:\n${server.tail()}`)
      if (performance.now() > deadline) throw error
      await Bun.sleep(20)
    }
  }
}

function baselineMessages(): { subjects: string[]; payloads: Uint8Array[] } {
  const encoder = new TextEncoder()
  const subjects = Array.from({ length: RIDS }, (_, i) => `bench.tel.meter.m${i}.power`)
  const now = Date.now()
  const payloads = Array.from({ length: BATCH }, (_, i) => {
    const text = `{"kind":"meter","rid":"m${i % RIDS}","q":"power","v":${Math.random() * 10_000},"t":${now}}`
    return encoder.encode(text.padEnd(BASELINE_PAYLOAD_BYTES, ' ').slice(0, BASELINE_PAYLOAD_BYTES))
  })
  return { subjects, payloads }
}

async function jetstreamPublish(
  js: JetStreamClient,
  subjects: string[],
  payloads: Uint8Array[],
  count: number,
): Promise<number> {
  const started = performance.now()
  for (let first = 0; first < count; first += BATCH) {
    const window: Promise<unknown>[] = new Array(BATCH)
    for (let i = 0; i < BATCH; i++) {
      const n = first + i
      window[i] = js.publish(subjects[n % RIDS]!, payloads[n % BATCH]!)
    }
    await Promise.all(window)
  }
  return count / ((performance.now() - started) / 1000)
}

async function corePublish(
  nc: NatsConnection,
  subjects: string[],
  payloads: Uint8Array[],
  count: number,
): Promise<number> {
  const started = performance.now()
  // Flushed every CORE_FLUSH_EVERY messages so the client buffer stays bounded (one huge
  // synchronous burst makes the number swing with GC).
  for (let first = 0; first < count; first += CORE_FLUSH_EVERY) {
    const last = Math.min(first + CORE_FLUSH_EVERY, count)
    for (let n = first; n < last; n++) nc.publish(subjects[n % RIDS]!, payloads[n % BATCH]!)
    await nc.flush()
  }
  return count / ((performance.now() - started) / 1000)
}

/**
 * What the node itself does: core publishes with a reply subject per window, the JetStream acks
 * of a window counted on one subscription, `CONCURRENCY` windows of 1,000 in flight.
 */
async function pipelinedAckPublish(
  nc: NatsConnection,
  subjects: string[],
  payloads: Uint8Array[],
  count: number,
): Promise<number> {
  const inbox = createInbox()
  const waiting = new Map<string, { remaining: number; failures: number; done: () => void }>()
  const subscription = nc.subscribe(`${inbox}.*`, {
    callback: (error, msg) => {
      if (error) return
      const window = waiting.get(msg.subject)
      if (!window) return
      if (msg.headers?.hasError || msg.string().includes('"error"')) window.failures += 1
      window.remaining -= 1
      if (window.remaining === 0) window.done()
    },
  })
  await nc.flush()
  let next = 0
  let failures = 0
  const started = performance.now()
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async (_, lane) => {
      const reply = `${inbox}.${lane}`
      for (let first = next; first < count; first = next) {
        next += BATCH
        const size = Math.min(BATCH, count - first)
        const done = new Promise<void>((resolveWindow) => {
          waiting.set(reply, { remaining: size, failures: 0, done: resolveWindow })
        })
        for (let n = first; n < first + size; n++)
          nc.publish(subjects[n % RIDS]!, payloads[n % BATCH]!, { reply })
        await done
        failures += waiting.get(reply)!.failures
      }
    }),
  )
  const perS = count / ((performance.now() - started) / 1000)
  subscription.unsubscribe()
  if (failures > 0) throw new Error(`JetStream refused ${failures} pipelined publishes`)
  return perS
}

interface Baselines {
  jetstreamPerS: number
  pipelinedPerS: number
  corePerS: number
}

async function natsBaseline(scope: Scope, work: string): Promise<Baselines> {
  const executable = Bun.which('nats-server') ?? '/usr/sbin/nats-server'
  const port = await freePort()
  const server = scope.spawn(
    'nats-server',
    executable,
    ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', join(work, 'baseline-js')],
    { logFile: join(work, 'baseline-nats.log') },
  )
  const nc = await connectWhenUp(`nats://127.0.0.1:${port}`, server)
  scope.defer('close the baseline NATS connection', () => nc.close())
  const jsm = await jetstreamManager(nc)
  // Like the node's OE_TEL: file storage, limits retention.
  await jsm.streams.add({
    name: 'BENCH',
    subjects: ['bench.tel.>'],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    num_replicas: 1,
    duplicate_window: nanos(2 * 60 * 1000),
  })
  const js = jetstream(nc)
  const { subjects, payloads } = baselineMessages()

  await jetstreamPublish(js, subjects, payloads, WARMUP_RECORDS)
  const jetstreamPerS = await jetstreamPublish(js, subjects, payloads, RECORDS)
  log(`baseline: JetStream acked publish ${Math.round(jetstreamPerS).toLocaleString('en-US')} records/s`)
  await pipelinedAckPublish(nc, subjects, payloads, WARMUP_RECORDS)
  const pipelinedPerS = await pipelinedAckPublish(nc, subjects, payloads, RECORDS)
  log(`baseline: pipelined acked publish ${Math.round(pipelinedPerS).toLocaleString('en-US')} records/s`)
  const stored = (await jsm.streams.info('BENCH')).state.messages
  if (stored !== 2 * (WARMUP_RECORDS + RECORDS))
    throw new Error(`the baseline stream holds ${stored} messages`)

  // Core publishes go outside the stream, to no subscriber: the client and the wire alone.
  const coreSubjects = subjects.map((subject) => `core.${subject}`)
  await corePublish(nc, coreSubjects, payloads, WARMUP_RECORDS)
  const corePerS = await corePublish(nc, coreSubjects, payloads, RECORDS)
  log(`baseline: core publish + flush ${Math.round(corePerS).toLocaleString('en-US')} records/s`)

  await nc.close()
  await server.stop()
  return { jetstreamPerS, pipelinedPerS, corePerS }
}

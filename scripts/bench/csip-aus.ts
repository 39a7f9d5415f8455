/**
 * The `csip-aus` suite (ARCHITECTURE §11, issue 12): a node (from source, `bun cli/main.ts`)
 * running the CSIP-AUS client in aggregator mode for SITES sites (default 1,000) against the
 * in-repo utility server (test/helpers/csip-server.ts, mutual TLS on loopback), which asks for
 * FSA/DERP polls and MirrorUsagePoint posts every POLL_S seconds (default 60; the client spreads
 * its sites over that period). Each site's meter gets a power reading every 5 s through the HTTP
 * API, so the client posts real readings while it polls.
 *
 * Once every site has registered, the server schedules ROUNDS back-to-back DERControls (an export
 * limit applying to every EndDevice), the first starting LEAD_S seconds ahead so every site has
 * polled it before it starts. Measured per site and control: from the control's start (server
 * time, which is the host's here) to its command `oe.ctl.site.<rid>.limit_export` on the node's
 * data plane (a core subscription on the node's nats-server); the node's CPU over the control
 * window; the node's RSS with its nats-server at the end.
 *
 * `metrics.sites`, `metrics.control_p99_ms` and `metrics.rss_mib` (node + nats-server; each is in
 * `rss_node_mib` and `rss_nats_mib`) are the issue's figures.
 */
import { createHash } from 'node:crypto'
import { copyFile, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { decodeCbor } from '../../data-plane/index.ts'
import { CsipTestServer, makePki } from '../../test/helpers/csip-server.ts'
import {
  launchNode,
  log,
  machine,
  type Numbers,
  percentile,
  processCpuMs,
  readAdminToken,
  readNatsPid,
  root,
  round,
  rssKiB,
  type Scope,
  type SuiteResult,
  show,
  startArgs,
  type TableRow,
} from './common.ts'

const SITES = Number(process.env.BENCH_CSIP_SITES ?? 1_000)
const ROUNDS = Number(process.env.BENCH_CSIP_ROUNDS ?? 2)
const POLL_S = Number(process.env.BENCH_CSIP_POLL_SECONDS ?? 60)
const ROUND_S = Number(process.env.BENCH_CSIP_ROUND_SECONDS ?? 60)
const LEAD_S = Number(process.env.BENCH_CSIP_LEAD_SECONDS ?? POLL_S + 30)
const READING_EVERY_MS = 5_000
const TARGETS = { sites: 1_000, control_p99_ms: 1_000, rss_mib: 300 }

/** A site's LFDI, like a certificate hash: its leading digits (in MirrorUsagePoint mRIDs) differ per site. */
const lfdiOf = (n: number) =>
  createHash('sha256').update(`bench-site-${n}`).digest('hex').slice(0, 40).toUpperCase()

export async function csipAusSuite(scope: Scope): Promise<SuiteResult> {
  const dir = await scope.tempDir('csip')
  // BENCH_CSIP_NODE_LOG=<path>: keep the node's log there (it goes with the temp dir otherwise).
  const keepLog = process.env.BENCH_CSIP_NODE_LOG
  if (keepLog) scope.defer('keep the node log', () => copyFile(join(dir, 'node.log'), keepLog))
  const pki = makePki(dir)
  const server = new CsipTestServer({ pki })
  server.rates = {
    dcap_poll_seconds: 300,
    edev_list_poll_seconds: 300,
    fsa_list_poll_seconds: POLL_S,
    derp_list_poll_seconds: POLL_S,
    der_list_poll_seconds: 300,
    mup_post_seconds: POLL_S,
  }
  server.createProgram(0)
  server.setDefaultControl({ opModExpLimW: 10_000, opModImpLimW: 10_000 })
  await server.start()
  scope.defer('stop the utility server', () => server.stop())

  const dataDir = join(dir, 'node')
  const config = [
    '[plugins.csip-aus]',
    'enabled = true',
    `server = "${server.url}/dcap"`,
    `cert = "${pki.clientCert}"`,
    `key = "${pki.clientKey}"`,
    `ca = "${pki.ca}"`,
    'mode = "aggregator"',
    ...Array.from({ length: SITES }, (_, i) => [
      `[plugins.csip-aus.sites.bench-${i + 1}]`,
      `lfdi = "${lfdiOf(i + 1)}"`,
      `nmi = "41030${String(i + 1).padStart(5, '0')}"`,
      `meter = "meter.bench-${i + 1}-meter"`,
      'rated_w = 5000',
    ]).flat(),
  ].join('\n')
  await Bun.write(join(dataDir, 'config.toml'), `${config}\n`, { createPath: true })
  log(`starting a node with the CSIP-AUS client for ${SITES} sites`)
  const node = await launchNode(scope, {
    label: 'oe-node csip',
    command: process.execPath,
    // BENCH_CSIP_NODE_FLAGS: runtime flags for the node (e.g. `--cpu-prof --cpu-prof-dir=/tmp/p`).
    args: [
      ...(process.env.BENCH_CSIP_NODE_FLAGS?.split(' ').filter(Boolean) ?? []),
      join(root, 'cli', 'main.ts'),
      ...startArgs(dataDir),
    ],
    dataDir,
    logFile: join(dir, 'node.log'),
    pollMs: 50,
    timeoutMs: 60_000,
  })

  const nodePid = node.child.pid
  const natsPidEarly = await readNatsPid(dataDir).catch(() => 0)
  // RSS of each process along the run, in the log (memory that grows with time shows here).
  const sampler = setInterval(() => {
    const nodeMiB = Math.round(rssKiB(nodePid) / 1024)
    const natsMiB = natsPidEarly ? Math.round(rssKiB(natsPidEarly) / 1024) : 0
    log(`RSS node ${nodeMiB} MiB, nats-server ${natsMiB} MiB`)
  }, 15_000)
  scope.defer('stop the RSS sampler', () => clearInterval(sampler))

  const registeredBy = performance.now() + 300_000
  while (server.devices.length < SITES || server.devices.some((device) => !device.der.derg)) {
    if (performance.now() > registeredBy)
      throw new Error(`only ${server.devices.length}/${SITES} sites registered in 300 s`)
    await Bun.sleep(200)
  }
  const registrationMs = performance.now() - node.readyMs
  log(`${SITES} sites registered in ${Math.round(registrationMs)} ms`)

  // Readings for every site's meter, every 5 s, so the client has something to post.
  const token = await readAdminToken(dataDir)
  const feeding = new AbortController()
  scope.defer('stop the readings', () => feeding.abort())
  const feed = (async () => {
    while (!feeding.signal.aborted) {
      const t = Date.now()
      const records = Array.from({ length: SITES }, (_, i) => ({
        kind: 'meter',
        rid: `bench-${i + 1}-meter`,
        q: 'power',
        v: -2_000 + Math.round(Math.random() * 500),
        t,
      }))
      await fetch(`${node.api}/v1/telemetry`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify(records),
        signal: feeding.signal,
      })
        .then((response) => response.arrayBuffer())
        .catch(() => {})
      await Bun.sleep(READING_EVERY_MS)
    }
  })()

  // Every command on the node's data plane, timed when it arrives.
  const status = (await (
    await fetch(`${node.api}/v1/status`, { headers: { authorization: `Bearer ${token}` } })
  ).json()) as { nats?: { url?: string } }
  const auth = JSON.parse(await readFile(join(dataDir, 'nats', 'auth.json'), 'utf8')) as {
    user: string
    password: string
  }
  const nc = await connect({ servers: status.nats!.url!, user: auth.user, pass: auth.password })
  scope.defer('close the bench connection', () => nc.close())
  const seen = new Map<string, number>() // `${rid} ${v}` → first arrival (ms)
  const sub = nc.subscribe('oe.ctl.site.*.limit_export')
  void (async () => {
    for await (const message of sub) {
      const rid = message.subject.split('.')[3]!
      let v: number | undefined
      try {
        v = (decodeCbor(message.data) as { v?: number }).v
      } catch {
        continue
      }
      const key = `${rid} ${v}`
      if (!seen.has(key)) seen.set(key, Date.now())
    }
  })()

  // ROUNDS back-to-back controls, the first LEAD_S ahead.
  const firstStart = server.now() + LEAD_S
  const controls = Array.from({ length: ROUNDS }, (_, round) => {
    const limit = 1_000 + round * 500
    server.createControl({
      start: firstStart + round * ROUND_S,
      duration: ROUND_S,
      base: { opModExpLimW: limit },
    })
    return { startMs: (firstStart + round * ROUND_S) * 1000, limit }
  })
  log(`${ROUNDS} controls of ${ROUND_S} s, the first starting in ${LEAD_S} s`)
  await Bun.sleep(Math.max(0, firstStart * 1000 - Date.now()))
  const cpuBefore = { node: processCpuMs(nodePid), nats: natsPidEarly ? processCpuMs(natsPidEarly) : 0 }
  const windowStarted = performance.now()
  await Bun.sleep(ROUNDS * ROUND_S * 1000 + 2_000)
  const windowS = (performance.now() - windowStarted) / 1000
  const cpuMsPerS = {
    node: (processCpuMs(nodePid) - cpuBefore.node) / windowS,
    nats: natsPidEarly ? (processCpuMs(natsPidEarly) - cpuBefore.nats) / windowS : 0,
  }
  feeding.abort()
  await feed

  const latencies: number[] = []
  let missing = 0
  for (const control of controls) {
    for (let i = 1; i <= SITES; i++) {
      const at = seen.get(`bench-${i} ${control.limit}`)
      if (at === undefined) missing++
      else latencies.push(at - control.startMs)
    }
  }
  const posts = server.requests.filter((r) => r.method === 'POST' && /^\/mup\/\d+$/.test(r.path)).length
  const natsPid = await readNatsPid(dataDir).catch(() => 0)
  const rssNodeMiB = rssKiB(node.child.pid) / 1024
  const rssNatsMiB = (natsPid ? rssKiB(natsPid) : 0) / 1024
  const rssMiB = rssNodeMiB + rssNatsMiB
  // Where the data plane's bytes are: each stream (the plugin's KV bucket is KV_oe-plugin-csip-aus-state).
  const jsm = await jetstreamManager(nc)
  const streams: Record<string, { written: number; consumers: number }> = {}
  for await (const info of jsm.streams.list()) {
    const { messages, last_seq: written, bytes, consumer_count: consumers } = info.state
    streams[info.config.name] = { written, consumers }
    log(
      `stream ${info.config.name}: ${messages} messages (${written} written), ` +
        `${Math.round(bytes / 1024)} KiB, ${consumers} consumers`,
    )
  }
  const requests = server.requests.length
  // What the client asks the server for, by resource (ids folded).
  const byResource = new Map<string, number>()
  for (const request of server.requests) {
    const key = `${request.method} ${request.path.replace(/\d+/g, 'N')}`
    byResource.set(key, (byResource.get(key) ?? 0) + 1)
  }
  log(
    `requests by resource: ${[...byResource]
      .sort((a, b) => b[1] - a[1])
      .map(([key, count]) => `${key} ${count}`)
      .join(', ')}`,
  )
  const metrics: Numbers = {
    sites: SITES,
    controls: ROUNDS,
    poll_s: POLL_S,
    control_p50_ms: percentile(latencies, 50),
    control_p99_ms: percentile(latencies, 99),
    control_max_ms: Math.max(...latencies, 0),
    missing_commands: missing,
    registration_ms: registrationMs,
    requests,
    reading_posts: posts,
    cpu_ms_per_s_node: cpuMsPerS.node,
    cpu_ms_per_s_nats: cpuMsPerS.nats,
    rss_mib: rssMiB,
    rss_node_mib: rssNodeMiB,
    rss_nats_mib: rssNatsMiB,
    // Consumers left on the telemetry stream (reads of it that were not cleaned up) and the
    // plugin's state writes (one per change is the aim, not one per poll).
    tel_consumers: streams.OE_TEL?.consumers ?? 0,
    state_writes: streams['KV_oe-plugin-csip-aus-state']?.written ?? 0,
  }
  const table: TableRow[] = [
    {
      metric: 'sites (aggregator mode, mutual TLS), polling and posting every',
      value: `${show(SITES)} · ${POLL_S} s`,
      reference: `target ${show(TARGETS.sites)} sites`,
    },
    {
      metric: 'control start → command on the data plane, p99',
      value: show(round(metrics.control_p99_ms!), 'ms'),
      reference: `target ≤ ${show(TARGETS.control_p99_ms)} ms`,
    },
    {
      metric: 'control start → command, p50 / max',
      value: `${show(round(metrics.control_p50_ms!))} / ${show(round(metrics.control_max_ms!), 'ms')}`,
      reference: '',
    },
    { metric: 'commands missing (sites × controls)', value: show(missing), reference: 'target 0' },
    { metric: 'registration of all sites', value: show(round(registrationMs), 'ms'), reference: '' },
    { metric: 'MirrorMeterReading posts received by the server', value: show(posts), reference: '' },
    {
      metric: 'CPU while controls run, node / nats-server',
      value: `${show(round(cpuMsPerS.node))} / ${show(round(cpuMsPerS.nats), 'ms per s')}`,
      reference: '',
    },
    {
      metric: 'node RSS (with nats-server)',
      value: show(round(rssMiB), 'MiB'),
      reference: `target < ${TARGETS.rss_mib} MiB`,
    },
    {
      metric: 'RSS: node / nats-server',
      value: `${show(round(rssNodeMiB))} / ${show(round(rssNatsMiB), 'MiB')}`,
      reference: '',
    },
  ]
  return {
    suite: 'csip-aus',
    when: new Date().toISOString(),
    machine: machine(),
    metrics,
    baselines: {},
    ratios: {},
    targets: TARGETS,
    table,
    headline: [table[0]!, table[1]!, table[7]!],
  }
}

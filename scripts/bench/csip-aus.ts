/**
 * The `csip-aus` suite (ARCHITECTURE §11): a node (from source, `bun cli/main.ts`) running the
 * CSIP-AUS client in aggregator mode for SITES sites against the in-repo utility server
 * (test/helpers/csip-server.ts, mutual TLS on loopback) that asks for a poll every POLL_S
 * seconds. After every site has registered in-band, the server issues ROUNDS DERControls (one
 * export limit applying to every site's EndDevice) ROUND_S seconds apart. Measured, per site and
 * control: the time from the control's creation on the server to the site's "started" response
 * (poll → schedule → command → response); plus the node's RSS with its nats-server at the end.
 *
 * `metrics.sites` is the number of sites, `metrics.control_p99_ms` the p99 of that latency,
 * `metrics.rss_mib` the node's RSS.
 */
import { join } from 'node:path'
import { CsipTestServer, makePki } from '../../test/helpers/csip-server.ts'
import {
  launchNode,
  log,
  machine,
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
} from './common.ts'

const SITES = Number(process.env.BENCH_CSIP_SITES ?? 100)
const ROUNDS = Number(process.env.BENCH_CSIP_ROUNDS ?? 5)
const POLL_S = Number(process.env.BENCH_CSIP_POLL_SECONDS ?? 5)
const ROUND_S = Number(process.env.BENCH_CSIP_ROUND_SECONDS ?? 15)
const TARGETS = { sites: 100, control_p99_ms: POLL_S * 1000 + 2_000, rss_mib: 512 }

const lfdiOf = (n: number) => `AB${n.toString(16).toUpperCase().padStart(38, '0')}`

export async function csipAusSuite(scope: Scope): Promise<SuiteResult> {
  const dir = await scope.tempDir('csip')
  const pki = makePki(dir)
  const server = new CsipTestServer({ pki })
  server.rates = {
    dcap_poll_seconds: 300,
    edev_list_poll_seconds: 300,
    fsa_list_poll_seconds: POLL_S,
    derp_list_poll_seconds: POLL_S,
    der_list_poll_seconds: 300,
    mup_post_seconds: 300,
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
    args: [join(root, 'cli', 'main.ts'), ...startArgs(dataDir)],
    dataDir,
    logFile: join(dir, 'node.log'),
    pollMs: 50,
    timeoutMs: 60_000,
  })

  const registeredBy = performance.now() + 120_000
  while (server.devices.length < SITES || server.devices.some((device) => !device.der.derg)) {
    if (performance.now() > registeredBy)
      throw new Error(`only ${server.devices.length}/${SITES} sites registered in 120 s`)
    await Bun.sleep(200)
  }
  const registrationMs = performance.now() - node.readyMs
  log(`${SITES} sites registered; ${ROUNDS} controls, ${ROUND_S} s apart`)

  const latencies: number[] = []
  let missing = 0
  for (let round = 0; round < ROUNDS; round++) {
    const createdAt = Date.now()
    const control = server.createControl({
      start: server.now(),
      duration: ROUND_S,
      base: { opModExpLimW: 1_000 + round * 500 },
    })
    await Bun.sleep(ROUND_S * 1000)
    const started = server.responses.filter((r) => r.subject === control.mrid && r.status === 2)
    const sites = new Set(started.map((r) => r.lfdi))
    missing += SITES - sites.size
    for (const response of started) latencies.push(response.at - createdAt)
  }

  const natsPid = await readNatsPid(dataDir).catch(() => 0)
  const rssMiB = (rssKiB(node.child.pid) + (natsPid ? rssKiB(natsPid) : 0)) / 1024
  const requests = server.requests.length
  const metrics: Numbers = {
    sites: SITES,
    controls: ROUNDS,
    poll_s: POLL_S,
    control_p50_ms: percentile(latencies, 50),
    control_p99_ms: percentile(latencies, 99),
    missing_responses: missing,
    registration_ms: registrationMs,
    requests,
    rss_mib: rssMiB,
  }
  const table: TableRow[] = [
    {
      metric: 'sites (aggregator mode, mutual TLS)',
      value: show(SITES),
      reference: `target ${TARGETS.sites}`,
    },
    {
      metric: 'control → started response, p99',
      value: show(round(metrics.control_p99_ms!), 'ms'),
      reference: `poll ${POLL_S} s; target ≤ ${TARGETS.control_p99_ms} ms`,
    },
    {
      metric: 'control → started response, p50',
      value: show(round(metrics.control_p50_ms!), 'ms'),
      reference: '',
    },
    { metric: 'sites that missed a control', value: show(missing), reference: 'target 0' },
    { metric: 'registration of all sites', value: show(round(registrationMs), 'ms'), reference: '' },
    {
      metric: 'node RSS (with nats-server)',
      value: show(round(rssMiB), 'MiB'),
      reference: `target ≤ ${TARGETS.rss_mib} MiB`,
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
    headline: [table[0]!, table[1]!, table[5]!],
  }
}

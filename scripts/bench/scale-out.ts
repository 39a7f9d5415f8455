/**
 * The `scale-out` suite (issue 15): replicas of one organisation's node on a 3-server NATS
 * cluster, all on this host.
 * - ingest: HTTP ingest (batches of 1,000 records, 4 requests in flight per replica) with 1, 2
 *   and 3 replicas, spread evenly over them; records/s stored (JetStream R3);
 * - takeover: with a partner node B taking A's meter power under an agreement, `kill -9` of the
 *   replica holding lease `transfer.<id>`, then the time until another replica holds it (p50 and
 *   max over `OE_BENCH_TAKEOVER_TRIALS` trials, 10 by default); the killed replica is started
 *   again between trials.
 * The nodes run from source (`bun cli/main.ts`, as the tests do), so the suite measures the tree
 * it is run in, whatever `dist/oe-node` was built from.
 * Writes `bench-results/scale-out.json` with `metrics.takeover_max_ms` and
 * `metrics.ingest_records_per_s_by_replicas` (`{ "1": …, "2": …, "3": … }`, also flat as
 * `ingest_records_per_s_by_replicas_<n>`).
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import {
  apiClient,
  freePort,
  type LaunchedNode,
  launchNode,
  log,
  machine,
  nodeEnv,
  percentile,
  readAdminToken,
  root,
  type Scope,
  type SuiteResult,
  show,
} from './common.ts'

const CLUSTER_SIZE = 3
const BATCH = 1_000
const IN_FLIGHT_PER_REPLICA = 4
const RECORDS = Number(process.env.OE_BENCH_SCALE_OUT_RECORDS ?? 60_000)
const TRIALS = Number(process.env.OE_BENCH_TAKEOVER_TRIALS ?? 10)
const TARGETS = { takeover_max_ms: 5_000 }

interface ReplicaNode {
  name: string
  dataDir: string
  args: string[]
  launched?: LaunchedNode
  api: string
  token: string
  id: string
}

/** The node from source: Bun (running this script) and the CLI entry. */
const NODE = [process.execPath, join(root, 'cli', 'main.ts')]

export async function scaleOutSuite(scope: Scope): Promise<SuiteResult> {
  const work = await scope.tempDir('scale-out')
  const url = await startCluster(scope, work)
  const { api } = apiClient(30_000)

  // Replicas of A: init each, the first one's key copied over the others.
  const replicas: ReplicaNode[] = []
  for (let i = 0; i < CLUSTER_SIZE; i++) {
    const dataDir = join(work, `a${i + 1}`)
    const init = Bun.spawnSync([...NODE, '--data-dir', dataDir, 'init', '--org', 'OrgA', '--json'], {
      stdout: 'ignore',
      stderr: 'pipe',
    })
    if (init.exitCode !== 0) throw new Error(`oe-node init ${dataDir}: ${init.stderr.toString()}`)
    if (i > 0) await copyFile(join(work, 'a1', 'keys', 'node.key'), join(dataDir, 'keys', 'node.key'))
    const args = [
      '--data-dir',
      dataDir,
      'start',
      '--api',
      '127.0.0.1:0',
      '--listen',
      `/ip4/127.0.0.1/tcp/${await freePort()}`,
      '--nats-url',
      url,
    ]
    replicas.push({ name: `a${i + 1}`, dataDir, args, api: '', token: '', id: '' })
  }
  const launch = async (replica: ReplicaNode): Promise<void> => {
    replica.launched = await launchNode(scope, {
      label: `oe-node ${replica.name}`,
      command: NODE[0]!,
      args: [NODE[1]!, ...replica.args],
      dataDir: replica.dataDir,
      logFile: join(work, `${replica.name}.log`),
      env: nodeEnv({ OE_NODE_LOG_LEVEL: 'warn' }),
      pollMs: 20,
      timeoutMs: 90_000,
    })
    replica.api = replica.launched.api
    replica.token = await readAdminToken(replica.dataDir)
    replica.id = ((await api(replica, 'GET', '/v1/status')) as { replica: { id: string } }).replica.id
  }

  // 1. Ingest with 1, 2, 3 replicas.
  const byReplicas: Record<number, number> = {}
  for (let n = 1; n <= CLUSTER_SIZE; n++) {
    await launch(replicas[n - 1]!)
    const rate = await ingest(replicas.slice(0, n), n)
    byReplicas[n] = rate
    log(`ingest with ${n} replica(s): ${Math.round(rate)} records/s`)
  }

  // 2. Takeover: a partner B, an agreement, then kill -9 of the owner, TRIALS times.
  const bDir = join(work, 'b')
  const b: ReplicaNode = {
    name: 'b',
    dataDir: bDir,
    args: [
      '--data-dir',
      bDir,
      'start',
      '--api',
      '127.0.0.1:0',
      '--listen',
      `/ip4/127.0.0.1/tcp/${await freePort()}`,
    ],
    api: '',
    token: '',
    id: '',
  }
  await mkdir(bDir, { recursive: true })
  await writeFile(join(bDir, 'config.toml'), 'org = "OrgB"\n')
  await launch(b)
  const card = async (node: ReplicaNode) => ((await api(node, 'GET', '/v1/card')) as { text: string }).text
  await api(replicas[0]!, 'POST', '/v1/peers', { card: await card(b), alias: 'b' })
  await api(b, 'POST', '/v1/peers', { card: await card(replicas[0]!), alias: 'a' })
  const proposed = (await api(b, 'POST', '/v1/agreements', {
    peer: 'a',
    grants: ['telemetry:kinds=meter;quantities=power'],
    purpose: 'scale-out bench',
    validUntil: new Date(Date.now() + 86_400_000).toISOString(),
  })) as { id: string }
  const id = proposed.id
  await waitUntil(async () => {
    const reply = await apiClient(5_000).request(replicas[1]!, 'GET', `/v1/agreements/${id}`)
    return reply.status === 200
  }, 'the proposal to reach A')
  await api(replicas[1]!, 'POST', `/v1/agreements/${id}/accept`)
  const owner = async (): Promise<ReplicaNode | undefined> => {
    for (const replica of replicas) {
      if (!replica.launched?.child.running) continue
      const status = (await api(replica, 'GET', '/v1/status').catch(() => undefined)) as
        | { leases: { name: string; mine: boolean }[] }
        | undefined
      if (status?.leases.some((lease) => lease.name === `transfer.${id}` && lease.mine)) return replica
    }
    return undefined
  }
  await waitUntil(async () => (await owner()) !== undefined, 'a replica to own the transfer')
  const takeoverMs: number[] = []
  for (let trial = 0; trial < TRIALS; trial++) {
    const victim = (await owner())!
    const killedAt = performance.now()
    await killNow(victim)
    let next: ReplicaNode | undefined
    await waitUntil(
      async () => {
        next = await owner()
        return next !== undefined && next !== victim
      },
      'another replica to take over',
      10,
    )
    takeoverMs.push(performance.now() - killedAt)
    log(`takeover ${trial + 1}/${TRIALS}: ${Math.round(takeoverMs.at(-1)!)} ms (${victim.id} → ${next!.id})`)
    await launch(victim)
  }

  const metrics: Record<string, number> = {
    takeover_p50_ms: percentile(takeoverMs, 50),
    takeover_max_ms: Math.max(...takeoverMs),
    takeover_trials: takeoverMs.length,
  }
  for (const [n, rate] of Object.entries(byReplicas))
    metrics[`ingest_records_per_s_by_replicas_${n}`] = rate
    // The map the issue names, `{ "1": …, "2": …, "3": … }`, next to the flat metrics (writeResult
    // rounds numbers and passes anything else through).
  ;(metrics as Record<string, unknown>).ingest_records_per_s_by_replicas = Object.fromEntries(
    Object.entries(byReplicas).map(([n, rate]) => [n, Math.round(rate)]),
  )
  const result: SuiteResult = {
    suite: 'scale-out',
    when: new Date().toISOString(),
    machine: machine(),
    metrics,
    baselines: {},
    ratios: { ingest_3_vs_1: (byReplicas[3] ?? Number.NaN) / (byReplicas[1] ?? Number.NaN) },
    targets: TARGETS,
    table: [
      ...Object.entries(byReplicas).map(([n, rate]) => ({
        metric: `ingest, ${n} replica${n === '1' ? '' : 's'} (R3 streams)`,
        value: show(rate, 'records/s'),
        reference: '',
      })),
      { metric: 'takeover after kill -9, p50', value: show(metrics.takeover_p50_ms!, 'ms'), reference: '' },
      {
        metric: `takeover after kill -9, max of ${takeoverMs.length}`,
        value: show(metrics.takeover_max_ms!, 'ms'),
        reference: `≤ ${TARGETS.takeover_max_ms} ms`,
      },
    ],
    headline: [
      {
        metric: 'scale-out takeover max',
        value: show(metrics.takeover_max_ms!, 'ms'),
        reference: '≤ 5,000 ms',
      },
      {
        metric: 'scale-out ingest ×3 replicas',
        value: show(byReplicas[3] ?? Number.NaN, 'records/s'),
        reference: `×1: ${show(byReplicas[1] ?? Number.NaN)}`,
      },
    ],
  }
  return result
}

/** SIGKILL a replica (its process group) and wait for the exit. */
async function killNow(replica: ReplicaNode): Promise<void> {
  const child = replica.launched!.child
  process.kill(-child.pid, 'SIGKILL')
  await child.exited
}

async function waitUntil(check: () => Promise<boolean>, what: string, pollMs = 100, timeoutMs = 60_000) {
  const deadline = performance.now() + timeoutMs
  while (performance.now() < deadline) {
    if (await check().catch(() => false)) return
    await Bun.sleep(pollMs)
  }
  throw new Error(`timed out waiting for ${what}`)
}

/** Post RECORDS records spread over `replicas`; stored records per second. */
async function ingest(replicas: ReplicaNode[], round: number): Promise<number> {
  const batches = Math.ceil(RECORDS / BATCH)
  let next = 0
  const body = (index: number) =>
    JSON.stringify(
      Array.from({ length: BATCH }, (_, i) => ({
        kind: 'meter',
        rid: `m${(index * BATCH + i) % 500}`,
        q: 'power',
        v: index * BATCH + i,
        t: Date.now() - 1_000 + i,
      })),
    )
  const payloads = Array.from({ length: Math.min(batches, 64) }, (_, i) => body(i + round * 1000))
  const started = performance.now()
  const workers = replicas.flatMap((replica) =>
    Array.from({ length: IN_FLIGHT_PER_REPLICA }, async () => {
      while (next < batches) {
        const index = next++
        const response = await fetch(`${replica.api}/v1/telemetry`, {
          method: 'POST',
          headers: { authorization: `Bearer ${replica.token}`, 'content-type': 'application/json' },
          body: payloads[index % payloads.length]!,
        })
        const answer = (await response.json()) as { accepted?: number }
        if (response.status !== 200 || answer.accepted !== BATCH)
          throw new Error(`${replica.name}: ingest answered ${response.status} ${JSON.stringify(answer)}`)
      }
    }),
  )
  await Promise.all(workers)
  return (batches * BATCH) / ((performance.now() - started) / 1000)
}

/** Three nats-servers with JetStream, routed into one cluster; resolves once JetStream answers. */
async function startCluster(scope: Scope, work: string): Promise<string> {
  const ports: { client: number; route: number }[] = []
  for (let i = 0; i < CLUSTER_SIZE; i++) ports.push({ client: await freePort(), route: await freePort() })
  for (let i = 0; i < CLUSTER_SIZE; i++) {
    const name = `n${i + 1}`
    const config = join(work, `${name}.conf`)
    const routes = ports
      .filter((_, j) => j !== i)
      .map((p) => `nats-route://127.0.0.1:${p.route}`)
      .join(', ')
    await writeFile(
      config,
      `server_name: ${name}\nlisten: 127.0.0.1:${ports[i]!.client}\n` +
        `jetstream { store_dir: ${JSON.stringify(join(work, name))} }\n` +
        `cluster { name: oe-bench\n  listen: 127.0.0.1:${ports[i]!.route}\n  routes: [${routes}] }\n`,
    )
    scope.spawn(`nats-server ${name}`, 'nats-server', ['-c', config], { logFile: join(work, `${name}.log`) })
  }
  const url = ports.map((p) => `nats://127.0.0.1:${p.client}`).join(',')
  await waitUntil(
    async () => {
      const nc = await connect({ servers: url.split(','), timeout: 1_000 })
      try {
        await (await jetstreamManager(nc, { timeout: 2_000 })).getAccountInfo()
        return true
      } finally {
        await nc.close()
      }
    },
    'the NATS cluster',
    250,
  )
  log(`NATS cluster of ${CLUSTER_SIZE} up: ${url}`)
  return url
}

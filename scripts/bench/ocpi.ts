/**
 * The `ocpi` suite (ARCHITECTURE §11): a node running the OCPI plugin as a CPO (from source,
 * `bun cli/main.ts`) with EVSES stations of one EVSE each (standing data through the admin
 * API), and an eMSP in this process (a minimal OCPI receiver) that registers with it. Measured:
 * the initial push of every location after registration (PUT each), a full pull of the
 * locations (paginated GETs), and then, for DURATION_S seconds, EVSE status changes published
 * on the node's data plane (`oe.evt.evse.<rid>.status`, as the OCPP plugin does) at RATE per
 * second, each timed from its publication to the PATCH that reaches the eMSP.
 *
 * `metrics.evses` is the number of EVSEs served, `metrics.patch_p99_ms` the p99 of status
 * change → PATCH at the eMSP.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { connect } from '@nats-io/transport-node'
import { encodeCbor } from '../../data-plane/index.ts'
import { formatDateTime } from '../../plugins/ocpi/index.ts'
import {
  freePort,
  launchNode,
  log,
  machine,
  type Numbers,
  percentile,
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

const EVSES = Number(process.env.BENCH_OCPI_EVSES ?? 10_000)
const RATE = Number(process.env.BENCH_OCPI_RATE ?? 1_000)
const DURATION_S = Number(process.env.BENCH_OCPI_SECONDS ?? 20)
const TARGETS = { evses: 10_000, patch_p99_ms: 100 }

const envelope = (data?: unknown) =>
  Response.json({
    ...(data === undefined ? {} : { data }),
    status_code: 1000,
    timestamp: formatDateTime(Date.now()),
  })

async function pool(count: number, width: number, task: (index: number) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(
    Array.from({ length: Math.min(width, count) }, async () => {
      while (next < count) await task(next++)
    }),
  )
}

export async function ocpiSuite(scope: Scope): Promise<SuiteResult> {
  const dir = await scope.tempDir('ocpi')
  const dataDir = join(dir, 'node')
  const port = await freePort()
  const config = [
    '[plugins.ocpi]',
    'enabled = true',
    `listen = "127.0.0.1:${port}"`,
    'country_code = "NL"',
    'party_id = "BEN"',
    'roles = ["cpo"]',
    'page_limit = 500',
    '[plugins.ocpi.location]',
    'address = "Benchstraat 1"',
    'city = "Utrecht"',
    'country = "NLD"',
    'latitude = "52.089444"',
    'longitude = "5.110278"',
    'time_zone = "Europe/Amsterdam"',
  ].join('\n')
  await Bun.write(join(dataDir, 'config.toml'), `${config}\n`, { createPath: true })
  log(`starting a node with the OCPI plugin (CPO) and ${EVSES} EVSEs`)
  const node = await launchNode(scope, {
    label: 'oe-node cpo',
    command: process.execPath,
    args: [join(root, 'cli', 'main.ts'), ...startArgs(dataDir)],
    dataDir,
    logFile: join(dir, 'node.log'),
    pollMs: 50,
    timeoutMs: 60_000,
  })
  const admin = {
    authorization: `Bearer ${await readAdminToken(dataDir)}`,
    'content-type': 'application/json',
  }
  const setupStarted = performance.now()
  await pool(EVSES, 16, async (i) => {
    const put = async (kind: string, rid: string, body: unknown) => {
      const response = await fetch(`${node.api}/v1/resources/${kind}/${rid}`, {
        method: 'PUT',
        headers: admin,
        body: JSON.stringify(body),
      })
      await response.arrayBuffer()
      if (!response.ok) throw new Error(`PUT ${kind}/${rid}: ${response.status}`)
    }
    await put('station', `B${i}`, { name: `bench ${i}` })
    await put('evse', `B${i}-1`, { attrs: { station: `B${i}`, evse: 1 } })
  })
  log(`standing data for ${EVSES} EVSEs in ${round(performance.now() - setupStarted)} ms`)

  // The eMSP: a locations receiver that notes when each PUT and PATCH arrives.
  const puts = new Set<string>()
  const patches = new Map<string, number[]>()
  let putsDone: () => void = () => {}
  const allPut = new Promise<void>((resolve) => {
    putsDone = resolve
  })
  const ourToken = `bench-${crypto.randomUUID()}`
  const receiver = Bun.serve({
    hostname: '127.0.0.1',
    port: 0,
    fetch: async (request, self) => {
      const url = new URL(request.url)
      const base = `http://127.0.0.1:${self.port}/ocpi`
      if (url.pathname === '/ocpi/versions') return envelope([{ version: '2.2.1', url: `${base}/2.2.1` }])
      if (url.pathname === '/ocpi/2.2.1')
        return envelope({
          version: '2.2.1',
          endpoints: [
            { identifier: 'credentials', role: 'SENDER', url: `${base}/2.2.1/credentials` },
            { identifier: 'locations', role: 'RECEIVER', url: `${base}/emsp/2.2.1/locations` },
          ],
        })
      const segments = url.pathname.split('/').slice(5)
      if (request.method === 'PUT' && segments.length === 3) {
        await request.arrayBuffer()
        puts.add(segments[2]!)
        if (puts.size >= EVSES) putsDone()
      } else if (request.method === 'PATCH' && segments.length === 4) {
        await request.arrayBuffer()
        const list = patches.get(segments[3]!) ?? []
        list.push(performance.now())
        patches.set(segments[3]!, list)
      }
      return envelope()
    },
  })
  scope.defer('stop the eMSP receiver', () => receiver.stop(true))
  const versions = `http://127.0.0.1:${port}/ocpi`
  const invitation = (await (
    await fetch(`${node.api}/v1/plugins/ocpi/actions/token_create`, {
      method: 'POST',
      headers: admin,
      body: JSON.stringify({ name: 'bench-emsp' }),
    })
  ).json()) as { result: { token: string } }
  const tokenA = Buffer.from(invitation.result.token).toString('base64')
  const registerStarted = performance.now()
  const registered = (await (
    await fetch(`${versions}/2.2.1/credentials`, {
      method: 'POST',
      headers: { authorization: `Token ${tokenA}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        token: ourToken,
        url: `http://127.0.0.1:${receiver.port}/ocpi/versions`,
        roles: [
          { role: 'EMSP', party_id: 'EMS', country_code: 'NL', business_details: { name: 'bench eMSP' } },
        ],
      }),
    })
  ).json()) as { status_code: number; data: { token: string } }
  if (registered.status_code !== 1000) throw new Error(`registration: OCPI ${registered.status_code}`)
  const tokenC = Buffer.from(registered.data.token).toString('base64')
  await Promise.race([allPut, Bun.sleep(120_000)])
  const pushAllMs = performance.now() - registerStarted
  log(`registered; ${puts.size} locations pushed in ${round(pushAllMs)} ms`)

  // A full pull, page by page.
  const pullStarted = performance.now()
  let pulled = 0
  let next: string | undefined = `${versions}/cpo/2.2.1/locations`
  while (next) {
    const response: Response = await fetch(next, { headers: { authorization: `Token ${tokenC}` } })
    const body = (await response.json()) as { data: unknown[] }
    pulled += body.data.length
    next = /<([^>]+)>;\s*rel="next"/.exec(response.headers.get('link') ?? '')?.[1]
  }
  const pullMs = performance.now() - pullStarted
  log(`pulled ${pulled} locations in ${round(pullMs)} ms`)

  // Status changes on the data plane → PATCH at the eMSP.
  const { nats } = (await (await fetch(`${node.api}/v1/status`, { headers: admin })).json()) as {
    nats: { url: string }
  }
  const auth = JSON.parse(await readFile(join(dataDir, 'nats', 'auth.json'), 'utf8'))
  const nc = await connect({ servers: nats.url, user: auth.user, pass: auth.password })
  scope.defer('close the NATS connection', () => nc.close())
  const sent = new Map<string, number[]>()
  const state = new Map<number, boolean>()
  const started = performance.now()
  const end = started + DURATION_S * 1000
  let published = 0
  const interval = 1000 / RATE
  while (performance.now() < end) {
    const index = published % EVSES
    const charging = !(state.get(index) ?? false)
    state.set(index, charging)
    const rid = `B${index}-1`
    const list = sent.get(rid) ?? []
    list.push(performance.now())
    sent.set(rid, list)
    nc.publish(
      `oe.evt.evse.${rid}.status`,
      encodeCbor({ status: charging ? 'Charging' : 'Available', t: Date.now() }),
    )
    published += 1
    const due = started + published * interval
    const wait = due - performance.now()
    if (wait > 0) await Bun.sleep(wait)
  }
  await nc.flush()
  const arrived = () => [...patches.values()].reduce((sum, list) => sum + list.length, 0)
  const deadline = performance.now() + 30_000
  while (arrived() < published && performance.now() < deadline) await Bun.sleep(100)
  const elapsedS = (performance.now() - started) / 1000
  const latencies: number[] = []
  let missing = 0
  for (const [rid, times] of sent) {
    const got = patches.get(rid) ?? []
    times.forEach((time, n) => {
      const at = got[n]
      if (at === undefined) missing += 1
      else latencies.push(at - time)
    })
  }
  const natsPid = await readNatsPid(dataDir).catch(() => 0)
  const rssMiB = (rssKiB(node.child.pid) + (natsPid ? rssKiB(natsPid) : 0)) / 1024
  const metrics: Numbers = {
    evses: EVSES,
    status_changes: published,
    status_changes_per_s: published / DURATION_S,
    patches_per_s: latencies.length / elapsedS,
    patch_p50_ms: percentile(latencies, 50),
    patch_p99_ms: percentile(latencies, 99),
    patches_missing: missing,
    push_all_ms: pushAllMs,
    pull_ms: pullMs,
    pulled,
    rss_mib: rssMiB,
  }
  const table: TableRow[] = [
    { metric: 'EVSEs served', value: show(EVSES), reference: `target ${TARGETS.evses}` },
    {
      metric: 'status change → PATCH at the eMSP, p99',
      value: show(round(metrics.patch_p99_ms!), 'ms'),
      reference: `target ≤ ${TARGETS.patch_p99_ms} ms (p50 ${show(round(metrics.patch_p50_ms!), 'ms')})`,
    },
    {
      metric: 'status changes offered / PATCHes per s',
      value: `${show(round(metrics.status_changes_per_s!))} / ${show(round(metrics.patches_per_s!))}`,
      reference: `${show(missing)} missing`,
    },
    {
      metric: 'push of every location after registration',
      value: show(round(pushAllMs), 'ms'),
      reference: '',
    },
    { metric: `pull of ${pulled} locations (pages of 500)`, value: show(round(pullMs), 'ms'), reference: '' },
    { metric: 'node RSS (with nats-server)', value: show(round(rssMiB), 'MiB'), reference: '' },
  ]
  return {
    suite: 'ocpi',
    when: new Date().toISOString(),
    machine: machine(),
    metrics,
    baselines: {},
    ratios: {},
    targets: TARGETS,
    table,
    headline: [table[0]!, table[1]!],
  }
}

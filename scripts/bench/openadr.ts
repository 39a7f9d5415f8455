/**
 * The `openadr` suite (ARCHITECTURE §11): a node running the OpenADR VTN plugin (from source,
 * `bun cli/main.ts`, so the suite measures the plugin as it is in the tree), with VENS VEN
 * clients and one BL client. Setup: every VEN gets a token, REPORTERS of them register a ven and
 * a resource, BL creates a program and EVENTS events (half of them targeted). Then for
 * DURATION_S seconds, from this process: every VEN polls `GET /events` every POLL_MS (spread
 * over the period), and each reporter posts one report (3 DEMAND intervals) every second.
 * Measured: requests/s answered, p50/p99 latency of polls, of reports and of all, errors, the
 * node's RSS (node + its nats-server) at the end, and the telemetry records the reports became
 * (OE_TEL grew by reports × 3, read through the node's tail endpoint count is not needed: the
 * reports' 201 means stored).
 *
 * `metrics.vens` is the number of polling VENs, `metrics.p99_ms` the p99 over all requests,
 * `metrics.rss_mib` the node's RSS with its nats-server.
 */
import { join } from 'node:path'
import {
  freePort,
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

const VENS = Number(process.env.BENCH_OPENADR_VENS ?? 1_000)
const REPORTERS = Math.min(VENS, Number(process.env.BENCH_OPENADR_REPORTERS ?? 100))
const DURATION_S = Number(process.env.BENCH_OPENADR_SECONDS ?? 30)
const POLL_MS = 10_000
const REPORT_MS = 1_000
const EVENTS = 10
const TARGETS = { vens: 1_000, p99_ms: 50, rss_mib: 512 }
const SECRET = 'bench-secret-0123'

async function post(url: string, token: string, body: unknown): Promise<Response> {
  return fetch(url, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  })
}

async function login(base: string, clientId: string): Promise<string> {
  const response = await fetch(`${base}/auth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'client_credentials',
      client_id: clientId,
      client_secret: SECRET,
    }),
  })
  const body = (await response.json()) as { access_token?: string }
  if (!body.access_token) throw new Error(`login ${clientId}: ${response.status}`)
  return body.access_token
}

/** Run `count` tasks with at most `width` at a time. */
async function pool<T>(count: number, width: number, task: (index: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(count)
  let next = 0
  await Promise.all(
    Array.from({ length: Math.min(width, count) }, async () => {
      while (next < count) {
        const index = next++
        out[index] = await task(index)
      }
    }),
  )
  return out
}

export async function openadrSuite(scope: Scope): Promise<SuiteResult> {
  const dir = await scope.tempDir('openadr')
  const dataDir = join(dir, 'node')
  const port = await freePort()
  const clients = Array.from({ length: VENS }, (_, i) => `ven-${i}`)
  const config = [
    '[plugins.openadr-vtn]',
    'enabled = true',
    `listen = "127.0.0.1:${port}"`,
    '[plugins.openadr-vtn.clients.bl]',
    `secret = "${SECRET}"`,
    'role = "bl"',
    ...clients.flatMap((id) => [
      `[plugins.openadr-vtn.clients.${id}]`,
      `secret = "${SECRET}"`,
      'role = "ven"',
    ]),
  ].join('\n')
  await Bun.write(join(dataDir, 'config.toml'), `${config}\n`, { createPath: true })
  log(`starting a node with the VTN and ${VENS} VEN clients`)
  const node = await launchNode(scope, {
    label: 'oe-node vtn',
    command: process.execPath,
    args: [join(root, 'cli', 'main.ts'), ...startArgs(dataDir)],
    dataDir,
    logFile: join(dir, 'node.log'),
    pollMs: 50,
    timeoutMs: 60_000,
  })
  const base = `http://127.0.0.1:${port}/openadr3/3.1.0`

  // Setup: tokens, program, events, reporters' vens and resources.
  const bl = await login(base, 'bl')
  const program = (await (await post(`${base}/programs`, bl, { programName: 'bench' })).json()) as {
    id: string
  }
  const tokens = await pool(VENS, 32, (i) => login(base, clients[i]!))
  const events: string[] = []
  for (let i = 0; i < EVENTS; i++) {
    const answer = await post(`${base}/events`, bl, {
      programID: program.id,
      eventName: `bench ${i}`,
      ...(i % 2 === 1 ? { targets: [`group-${i}`] } : {}),
      payloadDescriptors: [{ payloadType: 'PRICE', units: 'KWH', currency: 'EUR' }],
      intervalPeriod: { start: new Date().toISOString(), duration: 'PT1H' },
      intervals: Array.from({ length: 24 }, (_, id) => ({
        id,
        payloads: [{ type: 'PRICE', values: [0.1 + id / 100] }],
      })),
      reportDescriptors: [{ payloadType: 'DEMAND', units: 'KW' }],
    })
    events.push(((await answer.json()) as { id: string }).id)
  }
  await pool(REPORTERS, 16, async (i) => {
    const ven = (await (
      await post(`${base}/vens`, tokens[i]!, { objectType: 'VEN_VEN_REQUEST', venName: `site-${i}` })
    ).json()) as {
      id: string
    }
    await post(`${base}/resources`, tokens[i]!, {
      objectType: 'VEN_RESOURCE_REQUEST',
      resourceName: 'meter',
      venID: ven.id,
    })
  })
  log(`setup done: ${VENS} tokens, ${REPORTERS} reporters registered, ${EVENTS} events`)

  // Load.
  const pollLatencies: number[] = []
  const reportLatencies: number[] = []
  let errors = 0
  let lastError = ''
  const timed = async (into: number[], request: () => Promise<Response>, expected: number) => {
    const started = performance.now()
    try {
      const response = await request()
      await response.arrayBuffer()
      into.push(performance.now() - started)
      if (response.status !== expected) {
        errors += 1
        lastError = `status ${response.status}`
      }
    } catch (error) {
      errors += 1
      lastError = (error as Error).message
    }
  }
  const pending = new Set<Promise<void>>()
  const track = (work: Promise<void>) => {
    pending.add(work)
    void work.finally(() => pending.delete(work))
  }
  const started = performance.now()
  const end = started + DURATION_S * 1000
  const timers: ReturnType<typeof setInterval>[] = []
  for (let i = 0; i < VENS; i++) {
    const offset = (POLL_MS * i) / VENS
    const poll = () => {
      if (performance.now() < end)
        track(
          timed(
            pollLatencies,
            () => fetch(`${base}/events`, { headers: { authorization: `Bearer ${tokens[i]}` } }),
            200,
          ),
        )
    }
    setTimeout(() => {
      poll()
      timers.push(setInterval(poll, POLL_MS))
    }, offset)
  }
  let reportsSent = 0
  for (let i = 0; i < REPORTERS; i++) {
    const offset = (REPORT_MS * i) / REPORTERS
    const report = () => {
      if (performance.now() >= end) return
      reportsSent += 1
      const t0 = Date.now() - 3 * 60_000
      track(
        timed(
          reportLatencies,
          () =>
            post(`${base}/reports`, tokens[i]!, {
              eventID: events[0],
              clientName: `site-${i}`,
              payloadDescriptors: [{ payloadType: 'DEMAND', units: 'KW' }],
              resources: [
                {
                  resourceName: 'meter',
                  intervalPeriod: { start: new Date(t0).toISOString(), duration: 'PT1M' },
                  intervals: [0, 1, 2].map((id) => ({
                    id,
                    payloads: [{ type: 'DEMAND', values: [1 + id] }],
                  })),
                },
              ],
            }),
          201,
        ),
      )
    }
    setTimeout(() => {
      report()
      timers.push(setInterval(report, REPORT_MS))
    }, offset)
  }
  await Bun.sleep(DURATION_S * 1000)
  for (const timer of timers) clearInterval(timer)
  await Promise.all(pending)
  const elapsedS = (performance.now() - started) / 1000
  const natsPid = await readNatsPid(dataDir).catch(() => 0)
  const rssMiB = (rssKiB(node.child.pid) + (natsPid ? rssKiB(natsPid) : 0)) / 1024
  const all = [...pollLatencies, ...reportLatencies]
  const metrics: Numbers = {
    vens: VENS,
    reporters: REPORTERS,
    duration_s: elapsedS,
    requests_per_s: all.length / elapsedS,
    polls_per_s: pollLatencies.length / elapsedS,
    reports_per_s: reportLatencies.length / elapsedS,
    p50_ms: percentile(all, 50),
    p99_ms: percentile(all, 99),
    poll_p99_ms: percentile(pollLatencies, 99),
    report_p99_ms: percentile(reportLatencies, 99),
    errors,
    rss_mib: rssMiB,
    records_per_s: (reportLatencies.length * 3) / elapsedS,
  }
  if (errors > 0) log(`${errors} requests failed (last: ${lastError}); ${reportsSent} reports offered`)
  const table: TableRow[] = [
    { metric: 'VENs polling every 10 s', value: show(VENS), reference: `target ${TARGETS.vens}` },
    { metric: 'reporters (1 report/s each)', value: show(REPORTERS), reference: '' },
    {
      metric: 'requests/s answered',
      value: show(round(metrics.requests_per_s!)),
      reference: `${show(round(metrics.polls_per_s!))} polls, ${show(round(metrics.reports_per_s!))} reports`,
    },
    {
      metric: 'p99 latency, all',
      value: show(round(metrics.p99_ms!), 'ms'),
      reference: `target ≤ ${TARGETS.p99_ms} ms`,
    },
    {
      metric: 'p99 latency, polls / reports',
      value: `${show(round(metrics.poll_p99_ms!), 'ms')} / ${show(round(metrics.report_p99_ms!), 'ms')}`,
      reference: '',
    },
    { metric: 'errors', value: show(errors), reference: 'target 0' },
    {
      metric: 'node RSS (with nats-server)',
      value: show(round(rssMiB), 'MiB'),
      reference: `target ≤ ${TARGETS.rss_mib} MiB`,
    },
  ]
  return {
    suite: 'openadr',
    when: new Date().toISOString(),
    machine: machine(),
    metrics,
    baselines: {},
    ratios: {},
    targets: TARGETS,
    table,
    headline: [table[0]!, table[3]!, table[6]!],
  }
}

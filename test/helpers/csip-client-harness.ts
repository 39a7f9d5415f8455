/**
 * Runs the csip-aus client in-process against a CsipTestServer: a data plane in memory (the
 * compliance suite's) with the two capabilities the plugin API does not have yet — publishing
 * control commands and reading telemetry — recorded, and a logger that keeps every entry.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, test } from 'vitest'
import type { Logger, TelemetryRecord } from '../../data-plane/index.ts'
import { createFakeDataPlane } from '../../plugins/compliance.ts'
import { CsipClient, type CsipConfig, csipConfigSchema } from '../../plugins/ieee2030-5/index.ts'
import { type KeyValueStore, memoryStore } from '../../plugins/ieee2030-5/state.ts'
import { CsipTestServer, loadProcedure, makePki, type Pki, ProcedureRunner } from './csip-server.ts'

export interface LogEntry {
  level: string
  msg?: string
  [field: string]: unknown
}

export function recordingLogger(entries: LogEntry[], bindings: Record<string, unknown> = {}): Logger {
  const write = (level: string) => (obj: object, msg?: string) => {
    entries.push({ level, ...bindings, ...obj, ...(msg ? { msg } : {}) })
  }
  return {
    child: (more) => recordingLogger(entries, { ...bindings, ...more }),
    debug: write('debug'),
    info: write('info'),
    warn: write('warn'),
    error: write('error'),
  }
}

export interface PublishedCommand {
  rid: string
  command: string
  payload: Record<string, unknown>
  at: number
}

export interface ClientUnderTest {
  client: CsipClient
  commands: PublishedCommand[]
  logs: LogEntry[]
  feed(record: TelemetryRecord): void
  stop(): Promise<void>
}

export const AGGREGATOR_SITE_LFDI = '3E4F45AB31EDFE5B67E343E5E4562E3100000000'

export function startClient(
  server: CsipTestServer,
  pki: Pki,
  options: {
    store?: KeyValueStore
    config?: Partial<Record<string, unknown>>
    cert?: string
    key?: string
  } = {},
): ClientUnderTest {
  const logs: LogEntry[] = []
  const commands: PublishedCommand[] = []
  const handlers: ((record: TelemetryRecord) => void)[] = []
  const dataPlane = Object.assign(createFakeDataPlane(), {
    publishControl: async (_kind: 'site', rid: string, command: string, payload: Record<string, unknown>) => {
      commands.push({ rid, command, payload, at: Date.now() })
    },
    onTelemetry: (_selector: unknown, handler: (record: TelemetryRecord) => void) => {
      handlers.push(handler)
    },
  })
  const config: CsipConfig = csipConfigSchema.parse({
    server: `${server.url}/dcap`,
    cert: options.cert ?? pki.clientCert,
    key: options.key ?? pki.clientKey,
    ca: pki.ca,
    mode: 'aggregator',
    timeout: 3,
    sites: {
      'site-1': {
        nmi: '4103000001',
        lfdi: AGGREGATOR_SITE_LFDI,
        meter: 'meter.site-1-meter',
        ders: ['pv.site-1-pv', 'battery.site-1-bat'],
        rated_w: 5000,
      },
    },
    ...options.config,
  })
  const abort = new AbortController()
  const client = new CsipClient(config, {
    dataPlane,
    logger: recordingLogger(logs),
    metrics: { prefix: 'oe_plugin_csip_aus_', counter: () => ({ inc() {} }), gauge: () => ({ set() {} }) },
    signal: abort.signal,
    store: options.store ?? memoryStore(),
  })
  return {
    client,
    commands,
    logs,
    feed: (record) => {
      for (const handler of handlers) handler(record)
    },
    stop: async () => {
      abort.abort()
      await client.stop()
    },
  }
}

/** Telemetry of a simple site every 200 ms: meter, PV and battery. */
export function feedSite(
  target: ClientUnderTest,
  values: () => { meterW: number; pvW: number; batW: number },
): () => void {
  const timer = setInterval(() => {
    const t = Date.now()
    const { meterW, pvW, batW } = values()
    for (const record of [
      { kind: 'meter', rid: 'site-1-meter', q: 'power', v: meterW },
      { kind: 'meter', rid: 'site-1-meter', q: 'reactive_power', v: 120 },
      { kind: 'meter', rid: 'site-1-meter', q: 'voltage', v: 231.2 },
      { kind: 'pv', rid: 'site-1-pv', q: 'power', v: pvW },
      { kind: 'pv', rid: 'site-1-pv', q: 'reactive_power', v: 10 },
      { kind: 'battery', rid: 'site-1-bat', q: 'power', v: batW },
    ] as const)
      target.feed({ ...record, t })
  }, 200)
  return () => clearInterval(timer)
}

export async function withPki<T>(work: (pki: Pki) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'csip-pki-'))
  try {
    return await work(makePki(dir))
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

export async function waitUntil(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

export interface CactusRun {
  server: CsipTestServer
  runner: ProcedureRunner
  client: ClientUnderTest
}

/**
 * Run a CACTUS procedure to its end (bounded by `limitMs`), time compressed by `scale`; then,
 * as a tester would before judging, let every control the server holds run out, and stop.
 */
export async function runCactus(
  pki: Pki,
  id: string,
  options: { scale?: number; limitMs?: number; config?: Record<string, unknown> } = {},
): Promise<CactusRun> {
  const server = new CsipTestServer({ pki, scale: options.scale ?? 60 })
  await server.start()
  const runner = new ProcedureRunner(id, loadProcedure(id), server, {
    lfdi: AGGREGATOR_SITE_LFDI,
    sfdi: '167261211391',
  })
  runner.start()
  const client = startClient(server, pki, options.config ? { config: options.config } : {})
  const stopFeed = feedSite(client, () => ({ meterW: -2500, pvW: -4000, batW: 0 }))
  await client.client.start()
  const deadline = Date.now() + (options.limitMs ?? 40_000)
  try {
    await Promise.race([
      runner.done(),
      new Promise((resolve) => setTimeout(resolve, options.limitMs ?? 40_000)),
    ])
    const ended = () =>
      server.controls.every(
        (control) =>
          control.status === 2 ||
          control.start + control.duration + (control.randomizeStart ?? 0) < server.now() - 1,
      )
    await waitUntil(
      () => ended() || Date.now() > deadline,
      Math.max(0, deadline - Date.now()) + 1_000,
      'controls to end',
    )
    // The criteria are judged when the tester ends the test, a little after the last step.
    await new Promise((resolve) => setTimeout(resolve, 2_000))
  } finally {
    stopFeed()
    runner.stop()
    await client.stop()
    await server.stop()
  }
  return { server, runner, client }
}

export interface CactusCase {
  id: string
  /** What the procedure covers, for the test name. */
  title: string
  limitMs?: number
  config?: Record<string, unknown>
  /** Behaviour to check beyond the procedure's own criteria. */
  also?: (run: CactusRun) => void
}

/**
 * One test per procedure, named after its id: the procedure's criteria all hold, and the client
 * logged no error. Files share one PKI; each test its own server and client.
 */
export function cactusSuite(cases: readonly CactusCase[]): void {
  let dir: string
  let pki: Pki
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'csip-cactus-'))
    pki = makePki(dir)
  })
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })
  for (const entry of cases) {
    const limitMs = entry.limitMs ?? 40_000
    test(
      `${entry.id} ${entry.title}`,
      async () => {
        const run = await runCactus(pki, entry.id, {
          limitMs,
          ...(entry.config ? { config: entry.config } : {}),
        })
        const failed = run.runner.criteria().filter((result) => !result.ok)
        expect(failed, run.runner.log.join('\n')).toEqual([])
        expect(run.client.logs.filter((log) => log.level === 'error')).toEqual([])
        entry.also?.(run)
      },
      limitMs + 15_000,
    )
  }
}

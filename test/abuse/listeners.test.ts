/**
 * Every listener of one real node (the HTTP API, the OCPP WebSocket, the OpenADR VTN, the OCPI
 * endpoints and the libp2p port) under slowloris, connection floods, oversized input and seeded
 * fuzz over the wire. After every case: /readyz is 200, the node's RSS is back within bounds, and
 * the records ingested before the first case are all still there, once each.
 *
 * Set OE_ABUSE_REPORT=<file> to get the observations as a Markdown table.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { connect as connectTcp, type Socket } from 'node:net'
import { join } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect as connectNats, type NatsConnection } from '@nats-io/transport-node'
import { RPCClient } from 'ocpp-rpc'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import WebSocket from 'ws'
import { freePort } from '../../data-plane/index.ts'
import { prng } from '../helpers/check.ts'
import { api, cardOf, waitPeerState } from '../helpers/federation.ts'
import { cleanupAll, type RunningNode, startNode, telemetry, waitFor } from '../helpers/node-process.ts'

const INGEST_TOKEN = 'abuse-ingest-token-0123456789'
const STATION_PASSWORD = 'abuse-station-password-01'
const BL_SECRET = 'abuse-bl-secret-0123456789'
const OCPP_MAX_MESSAGE_BYTES = 65_536
const BASELINE_RECORDS = 1_000
/** RSS may grow this much over the case's start and still be "back within bounds". */
const RSS_SLACK_BYTES = 150 * 1024 * 1024
/** And never above this, whatever the case. */
const RSS_CEILING_BYTES = 1024 * 1024 * 1024
/** Bun closes a connection whose request head is unfinished after about 10 s (uWS). */
const HEAD_TIMEOUT_S = 10
/** VTN and OCPI request timeout (plugins/openadr/server.ts, plugins/ocpi/server.ts). */
const PLUGIN_REQUEST_TIMEOUT_S = 15

let node: RunningNode
let nats: NatsConnection
const ports = { api: 0, ocpp: 0, vtn: 0, ocpi: 0, libp2p: 0 }
let ocpiToken = ''

interface Observation {
  case: string
  load: string
  observed: string
  lost: number
  duplicated: number
  rssBeforeMb: number
  rssAfterMb: number
}
const observations: Observation[] = []

async function rss(): Promise<number> {
  const status = await readFile(`/proc/${node.process.pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024
}

/** Baseline records in the node's stream, by subject. */
async function baselineCount(): Promise<number> {
  const jsm = await jetstreamManager(nats)
  const info = await jsm.streams.info('OE_TEL', { subjects_filter: 'oe.tel.meter.>' })
  let count = 0
  for (const [subject, n] of Object.entries(info.state.subjects ?? {}))
    if (subject.startsWith('oe.tel.meter.abusebase')) count += n
  return count
}

/** Run one case: note RSS before, then check health, RSS and records after, and record what was seen. */
async function abuseCase(name: string, load: string, run: () => Promise<string>): Promise<void> {
  const before = await rss()
  const observed = await run()
  const ready = await fetch(`${node.api}/readyz`)
  expect(ready.status, `${name}: /readyz`).toBe(200)
  await ready.body?.cancel()
  // Freed memory goes back to the OS with some delay.
  let after = await rss()
  const deadline = Date.now() + 15_000
  while (after > before + RSS_SLACK_BYTES && Date.now() < deadline) {
    await Bun.sleep(500)
    after = await rss()
  }
  expect(after, `${name}: RSS after`).toBeLessThan(Math.min(before + RSS_SLACK_BYTES, RSS_CEILING_BYTES))
  const count = await baselineCount()
  expect(count, `${name}: baseline records`).toBe(BASELINE_RECORDS)
  expect(node.process.exitCode).toBeNull()
  observations.push({
    case: name,
    load,
    observed,
    lost: Math.max(0, BASELINE_RECORDS - count),
    duplicated: Math.max(0, count - BASELINE_RECORDS),
    rssBeforeMb: Math.round(before / 1048576),
    rssAfterMb: Math.round(after / 1048576),
  })
}

beforeAll(async () => {
  ports.ocpp = await freePort()
  ports.vtn = await freePort()
  ports.ocpi = await freePort()
  node = await startNode({
    config: [
      'org = "Abuse"',
      '[api]',
      `ingest_tokens = ["${INGEST_TOKEN}"]`,
      '[plugins.ocpp]',
      'enabled = true',
      `listen = "127.0.0.1:${ports.ocpp}"`,
      `max_message_bytes = ${OCPP_MAX_MESSAGE_BYTES}`,
      '[plugins.ocpp.stations.ABUSE1]',
      `password = "${STATION_PASSWORD}"`,
      '[plugins.ocpp.stations.PROBE]',
      `password = "${STATION_PASSWORD}"`,
      '[plugins.ocpp.stations.FUZZ]',
      `password = "${STATION_PASSWORD}"`,
      '[plugins.openadr-vtn]',
      'enabled = true',
      `listen = "127.0.0.1:${ports.vtn}"`,
      '[plugins.openadr-vtn.clients.bl]',
      `secret = "${BL_SECRET}"`,
      'role = "bl"',
      '[plugins.ocpi]',
      'enabled = true',
      `listen = "127.0.0.1:${ports.ocpi}"`,
      'country_code = "NL"',
      'party_id = "ABU"',
      'roles = ["cpo"]',
      'pull_interval = 0',
    ].join('\n'),
  })
  ports.api = Number(new URL(node.api).port)
  const status = await api<{ addrs: string[]; nats: { url: string } }>(node, 'GET', '/v1/status')
  const tcp = status.addrs.map((addr) => /\/ip4\/127\.0\.0\.1\/tcp\/(\d+)/.exec(addr)?.[1]).find(Boolean)
  ports.libp2p = Number(tcp)
  const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8'))
  nats = await connectNats({ servers: status.nats.url, user: auth.user, pass: auth.password })
  const created = await api<{ result: { token: string } }>(
    node,
    'POST',
    '/v1/plugins/ocpi/actions/token_create',
    {
      name: 'abuse',
    },
  )
  ocpiToken = created.result.token
  // The records every case must leave alone.
  const response = await fetch(`${node.api}/v1/telemetry`, {
    method: 'POST',
    headers: { authorization: `Bearer ${INGEST_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify(telemetry(BASELINE_RECORDS, { rid: (i) => `abusebase${i % 10}` })),
  })
  expect(await response.json()).toMatchObject({ accepted: BASELINE_RECORDS, rejected: 0 })
  await waitFor(async () => (await baselineCount()) === BASELINE_RECORDS, 10_000, 'baseline records')
}, 60_000)

afterAll(async () => {
  const file = process.env.OE_ABUSE_REPORT
  if (file) {
    const lines = [
      '| Case | Load or input | Observed | Records lost | Duplicated | RSS before → after (MB) |',
      '|---|---|---|---|---|---|',
      ...observations.map(
        (o) =>
          `| ${o.case} | ${o.load} | ${o.observed} | ${o.lost} | ${o.duplicated} | ${o.rssBeforeMb} → ${o.rssAfterMb} |`,
      ),
    ]
    await writeFile(file, `${lines.join('\n')}\n`)
  }
  await nats?.close().catch(() => {})
  await cleanupAll()
})

// ── normal clients, one per listener ──────────────────────────────────────────────────────────

type Listener = 'api' | 'ocpp' | 'vtn' | 'ocpi'
const LISTENERS: Listener[] = ['api', 'ocpp', 'vtn', 'ocpi']

/** One ordinary request to a listener; resolves with its latency in ms, throws when it fails. */
async function probe(listener: Listener): Promise<number> {
  const started = performance.now()
  const signal = AbortSignal.timeout(5_000)
  if (listener === 'api') {
    const response = await fetch(`${node.api}/v1/telemetry`, {
      method: 'POST',
      headers: { authorization: `Bearer ${INGEST_TOKEN}`, 'content-type': 'application/json' },
      body: '[]',
      signal,
    })
    expect(response.status).toBe(200)
    await response.body?.cancel()
  } else if (listener === 'vtn') {
    const response = await fetch(`http://127.0.0.1:${ports.vtn}/openadr3/3.1.0/auth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'client_credentials',
        client_id: 'bl',
        client_secret: BL_SECRET,
      }),
      signal,
    })
    expect(response.status).toBe(200)
    expect(await response.json()).toMatchObject({ token_type: 'Bearer' })
  } else if (listener === 'ocpi') {
    const response = await fetch(`http://127.0.0.1:${ports.ocpi}/ocpi/versions`, {
      headers: { authorization: `Token ${Buffer.from(ocpiToken).toString('base64')}` },
      signal,
    })
    expect(response.status).toBe(200)
    expect(await response.json()).toMatchObject({ status_code: 1000 })
  } else {
    const station = new RPCClient({
      endpoint: `ws://127.0.0.1:${ports.ocpp}/ocpp`,
      identity: 'PROBE',
      password: STATION_PASSWORD,
      protocols: ['ocpp1.6'],
      strictMode: true,
      reconnect: false,
    } as never)
    try {
      await Promise.race([
        (async () => {
          await station.connect()
          const answer = (await station.call('BootNotification', {
            chargePointVendor: 'Abuse',
            chargePointModel: 'Probe',
          })) as { status?: string }
          expect(answer.status).toBeDefined()
        })(),
        new Promise((_, reject) =>
          signal.addEventListener('abort', () => reject(new Error('OCPP probe timed out'))),
        ),
      ])
    } finally {
      await station.close({ force: true }).catch(() => {})
    }
  }
  return performance.now() - started
}

/** Probe every listener; the latencies by listener. */
async function probeAll(): Promise<Record<Listener, number>> {
  const results = await Promise.all(
    LISTENERS.map(async (listener) => [listener, await probe(listener)] as const),
  )
  return Object.fromEntries(results) as Record<Listener, number>
}

const ms = (values: number[]): string => `${Math.round(Math.max(...values))} ms`

// ── raw sockets ────────────────────────────────────────────────────────────────────────────────

interface HeldSocket {
  socket: Socket
  openedAt: number
  /** When the server closed it (ms after opening); undefined while open. */
  closedAfterMs?: number
  /** First bytes the server sent, if any. */
  answer: string
}

const held: HeldSocket[] = []

function open(port: number, onOpen?: (socket: Socket) => void, localAddress?: string): Promise<HeldSocket> {
  return new Promise((resolve) => {
    const socket = connectTcp({ port, host: '127.0.0.1', ...(localAddress ? { localAddress } : {}) })
    const entry: HeldSocket = { socket, openedAt: Date.now(), answer: '' }
    held.push(entry)
    socket.on('connect', () => {
      entry.openedAt = Date.now()
      onOpen?.(socket)
      resolve(entry)
    })
    socket.on('data', (chunk) => {
      if (entry.answer.length < 200) entry.answer += chunk.toString('latin1')
    })
    const closed = () => {
      entry.closedAfterMs ??= Date.now() - entry.openedAt
      resolve(entry)
    }
    socket.on('close', closed)
    socket.on('end', () => socket.end())
    socket.on('error', () => {})
  })
}

function releaseAll(): void {
  for (const entry of held.splice(0)) entry.socket.destroy()
}

/** Open `count` sockets to `port`, `batch` at a time. */
async function openMany(
  port: number,
  count: number,
  onOpen?: (socket: Socket) => void,
  batch = 100,
  localAddress?: string,
) {
  const sockets: HeldSocket[] = []
  for (let i = 0; i < count; i += batch) {
    sockets.push(
      ...(await Promise.all(
        Array.from({ length: Math.min(batch, count - i) }, () => open(port, onOpen, localAddress)),
      )),
    )
  }
  return sockets
}

const HEADS: Record<Listener, (port: number) => string> = {
  api: (port) => `GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Slow: `,
  vtn: (port) => `GET /openadr3/3.1.0/programs HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Slow: `,
  ocpi: (port) => `GET /ocpi/versions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Slow: `,
  ocpp: (port) =>
    `GET /ocpp/ABUSE1 HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Slow: `,
}

const summary = (sockets: HeldSocket[]): { closed: number; maxS: number } => {
  const closed = sockets.filter((s) => s.closedAfterMs !== undefined)
  return { closed: closed.length, maxS: Math.max(0, ...closed.map((s) => s.closedAfterMs! / 1000)) }
}

describe('abuse, every listener', () => {
  test('slowloris: 120 connections per HTTP listener send a header byte every 2 s; slow bodies on the VTN and OCPI', async () => {
    const perListener = 120
    await abuseCase(
      'Slowloris',
      `${perListener} connections per listener (API, OCPP, VTN, OCPI) sending one header byte every 2 s; 30 request bodies (VTN, OCPI) sending one byte every 2 s`,
      async () => {
        const usual = await probeAll()
        const heads: Record<string, HeldSocket[]> = {}
        for (const listener of LISTENERS) {
          heads[listener] = await openMany(ports[listener], perListener, (socket) =>
            socket.write(HEADS[listener](ports[listener])),
          )
        }
        const bodies: Record<string, HeldSocket[]> = {}
        for (const [listener, path] of [
          ['vtn', '/openadr3/3.1.0/auth/token'],
          ['ocpi', '/ocpi/2.2.1/credentials'],
        ] as const) {
          bodies[listener] = await openMany(ports[listener], 30, (socket) =>
            socket.write(
              `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{`,
            ),
          )
        }
        const all = [...Object.values(heads).flat(), ...Object.values(bodies).flat()]
        const drip = setInterval(() => {
          for (const entry of all) if (entry.closedAfterMs === undefined) entry.socket.write('a')
        }, 2_000)
        const during: Record<Listener, number[]> = { api: [], ocpp: [], vtn: [], ocpi: [] }
        try {
          // Normal clients keep being answered while the attack runs.
          for (let round = 0; round < 3; round++) {
            const latencies = await probeAll()
            for (const listener of LISTENERS) during[listener].push(latencies[listener])
            await Bun.sleep(1_500)
          }
          await waitFor(
            () => all.every((entry) => entry.closedAfterMs !== undefined),
            (PLUGIN_REQUEST_TIMEOUT_S + 10) * 1000,
            'every slow connection closed by the server',
          )
        } finally {
          clearInterval(drip)
        }
        for (const listener of LISTENERS) {
          const { closed, maxS } = summary(heads[listener]!)
          expect(closed, listener).toBe(perListener)
          // The head timeout, checked by Bun every few seconds.
          expect(maxS, listener).toBeLessThan(HEAD_TIMEOUT_S + 6)
        }
        for (const listener of ['vtn', 'ocpi']) {
          expect(summary(bodies[listener]!).maxS, listener).toBeLessThan(PLUGIN_REQUEST_TIMEOUT_S + 6)
        }
        const parts = LISTENERS.map(
          (listener) =>
            `${listener}: usual ${Math.round(usual[listener])} ms, during ${ms(during[listener])}, slow heads closed ≤ ${summary(heads[listener]!).maxS.toFixed(1)} s`,
        )
        parts.push(
          `slow bodies closed ≤ ${Math.max(summary(bodies.vtn!).maxS, summary(bodies.ocpi!).maxS).toFixed(1)} s (VTN, OCPI)`,
        )
        releaseAll()
        return parts.join('; ')
      },
    )
  }, 90_000)

  test('connection flood: 2,000 idle sockets over the five listeners, and 300 requests in flight on the API', async () => {
    await abuseCase(
      'Connection flood',
      '400 idle TCP connections each to API, OCPP, VTN, OCPI and libp2p (2,000); then 300 unfinished POSTs to the API from one address',
      async () => {
        const idle: Record<string, HeldSocket[]> = {}
        for (const listener of [...LISTENERS, 'libp2p'] as const)
          idle[listener] = await openMany(ports[listener], 400)
        const ready = await fetch(`${node.api}/readyz`)
        expect(ready.status).toBe(200)
        const during = await probeAll()
        // Requests in flight from one address: the API takes 256 at once and answers the rest 429.
        const stalled = await openMany(ports.api, 300, (socket) =>
          socket.write(
            `POST /v1/telemetry HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${INGEST_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[`,
          ),
        )
        await waitFor(
          () => stalled.filter((s) => s.answer.startsWith('HTTP/1.1 429')).length >= 44,
          10_000,
          '429s',
        )
        const refused = stalled.filter((s) => s.answer.startsWith('HTTP/1.1 429')).length
        expect(refused).toBe(300 - 256)
        expect(stalled.find((s) => s.answer.startsWith('HTTP/1.1 429'))?.answer).toContain('TooManyRequests')
        // Health is answered whatever the load.
        expect((await fetch(`${node.api}/readyz`)).status).toBe(200)
        for (const entry of stalled) entry.socket.destroy()
        await Bun.sleep(300)
        const after = await probeAll()
        // Idle connections are closed by the server: HTTP listeners after the head timeout, libp2p
        // after its upgrade timeout (10 s) or at once past its pending-connection limit.
        await waitFor(
          () => Object.values(idle).every((list) => list.every((entry) => entry.closedAfterMs !== undefined)),
          25_000,
          'idle connections closed',
        )
        const libp2p = idle.libp2p!
        const atOnce = libp2p.filter((entry) => entry.closedAfterMs! < 1_000).length
        const parts = [
          `probes during ${ms(Object.values(during))}, after ${ms(Object.values(after))}`,
          `API in-flight from one address: 256 taken, ${refused} answered 429 TooManyRequests`,
          ...LISTENERS.map(
            (listener) => `${listener} idle closed ≤ ${summary(idle[listener]!).maxS.toFixed(1)} s`,
          ),
          `libp2p: ${atOnce} of 400 closed at once (pending-connection limit), the rest ≤ ${summary(libp2p).maxS.toFixed(1)} s`,
        ]
        releaseAll()
        return parts.join('; ')
      },
    )
  }, 90_000)

  test('oversized bodies, headers, frames, nesting and strings: a specific error each', async () => {
    await abuseCase(
      'Oversized input',
      'bodies over each limit (declared and chunked), 20 KB headers, a 70 KB OCPP frame, JSON nested 100,000 deep, a 1 MB resource id',
      async () => {
        const seen: string[] = []
        const bigHeader = { 'x-big': 'a'.repeat(20_000) }
        // Headers: 431 from the runtime on every HTTP listener.
        for (const listener of LISTENERS) {
          const url =
            listener === 'api'
              ? `${node.api}/readyz`
              : listener === 'ocpp'
                ? `http://127.0.0.1:${ports.ocpp}/ocpp/ABUSE1`
                : listener === 'vtn'
                  ? `http://127.0.0.1:${ports.vtn}/openadr3/3.1.0/programs`
                  : `http://127.0.0.1:${ports.ocpi}/ocpi/versions`
          const response = await fetch(url, { headers: bigHeader })
          expect(response.status, listener).toBe(431)
          await response.body?.cancel()
        }
        seen.push('20 KB header: 431 on API, OCPP, VTN, OCPI')

        // Bodies over the limit: API (16 MiB default), VTN and OCPI (1 MiB default).
        const ingestHeaders = { authorization: `Bearer ${INGEST_TOKEN}`, 'content-type': 'application/json' }
        const big = new Uint8Array(17 * 1024 * 1024).fill(0x20)
        const apiDeclared = await fetch(`${node.api}/v1/telemetry`, {
          method: 'POST',
          headers: ingestHeaders,
          body: big,
        })
        expect(apiDeclared.status).toBe(413)
        expect(await apiDeclared.json()).toMatchObject({ error: 'PayloadTooLarge' })
        const chunked = new ReadableStream<Uint8Array>({
          start(controller) {
            for (let i = 0; i < 17; i++) controller.enqueue(new Uint8Array(1024 * 1024).fill(0x20))
            controller.close()
          },
        })
        const apiChunked = await fetch(`${node.api}/v1/telemetry`, {
          method: 'POST',
          headers: ingestHeaders,
          body: chunked,
          duplex: 'half',
        } as RequestInit)
        expect(apiChunked.status).toBe(413)
        expect(await apiChunked.json()).toMatchObject({ error: 'PayloadTooLarge' })
        const vtnToken = await vtnBearer()
        const vtnBig = await fetch(`http://127.0.0.1:${ports.vtn}/openadr3/3.1.0/programs`, {
          method: 'POST',
          headers: { authorization: `Bearer ${vtnToken}`, 'content-type': 'application/json' },
          body: `{"programName":"${'x'.repeat(2 * 1024 * 1024)}"}`,
        })
        expect(vtnBig.status).toBe(413)
        const vtnProblem = (await vtnBig.json()) as { status?: number }
        expect(vtnProblem.status).toBe(413)
        const ocpiBig = await fetch(`http://127.0.0.1:${ports.ocpi}/ocpi/2.2.1/credentials`, {
          method: 'POST',
          headers: {
            authorization: `Token ${Buffer.from(ocpiToken).toString('base64')}`,
            'content-type': 'application/json',
          },
          body: `{"token":"${'x'.repeat(2 * 1024 * 1024)}"}`,
        })
        const ocpiEnvelope = (await ocpiBig.json()) as { status_code?: number; status_message?: string }
        expect(ocpiBig.status).toBe(413)
        expect(ocpiEnvelope.status_code).toBe(2000)
        seen.push(
          `bodies over the limit: API 413 PayloadTooLarge (declared and chunked), VTN 413 problem, OCPI ${ocpiBig.status} status_code ${ocpiEnvelope.status_code}`,
        )

        // JSON nesting and string lengths.
        const deep = `${'['.repeat(100_000)}${']'.repeat(100_000)}`
        const nested = await fetch(`${node.api}/v1/resources/meter/m1`, {
          method: 'PUT',
          headers: ingestHeaders,
          body: `{"attrs":${deep}}`,
        })
        expect(nested.status).toBe(400)
        expect(await nested.json()).toMatchObject({ error: 'NestingTooDeep' })
        const longId = await fetch(`${node.api}/v1/telemetry`, {
          method: 'POST',
          headers: ingestHeaders,
          body: JSON.stringify([
            { kind: 'meter', rid: 'r'.repeat(1024 * 1024), q: 'power', v: 1, t: Date.now() },
          ]),
        })
        expect(longId.status).toBe(200)
        const longResult = (await longId.json()) as {
          accepted: number
          rejected: number
          errors: { reason: string }[]
        }
        expect(longResult).toMatchObject({ accepted: 0, rejected: 1 })
        expect(longResult.errors[0]!.reason.length).toBeLessThan(1000)
        const vtnDeep = await fetch(`http://127.0.0.1:${ports.vtn}/openadr3/3.1.0/programs`, {
          method: 'POST',
          headers: { authorization: `Bearer ${vtnToken}`, 'content-type': 'application/json' },
          body: `{"programName":"p","x":${deep}}`,
        })
        expect(vtnDeep.status).toBe(400)
        expect(((await vtnDeep.json()) as { detail?: string }).detail).toMatch(/nests deeper than 64/)
        const ocpiDeep = await fetch(`http://127.0.0.1:${ports.ocpi}/ocpi/2.2.1/credentials`, {
          method: 'POST',
          headers: {
            authorization: `Token ${Buffer.from(ocpiToken).toString('base64')}`,
            'content-type': 'application/json',
          },
          body: `{"token":${deep}}`,
        })
        expect(ocpiDeep.status).toBe(400)
        const ocpiDeepBody = (await ocpiDeep.json()) as { status_code?: number; status_message?: string }
        expect(ocpiDeepBody).toMatchObject({
          status_code: 2000,
          status_message: expect.stringMatching(/nests deeper than 64/),
        })
        seen.push(
          `JSON nested 100,000 deep: API 400 NestingTooDeep, VTN ${vtnDeep.status}, OCPI ${ocpiDeep.status} status_code ${ocpiDeepBody.status_code}; a 1 MB rid: rejected with a ${longResult.errors[0]!.reason.length}-character reason`,
        )

        // OCPP: a frame over max_message_bytes closes the WebSocket with 1009.
        const code = await new Promise<number>((resolve, reject) => {
          const socket = new WebSocket(`ws://127.0.0.1:${ports.ocpp}/ocpp/ABUSE1`, ['ocpp1.6'], {
            headers: {
              authorization: `Basic ${Buffer.from(`ABUSE1:${STATION_PASSWORD}`).toString('base64')}`,
            },
          })
          socket.on('open', () =>
            socket.send(
              JSON.stringify([2, '1', 'DataTransfer', { vendorId: 'x', data: 'y'.repeat(70_000) }]),
            ),
          )
          socket.on('close', (closeCode) => resolve(closeCode))
          socket.on('error', reject)
          setTimeout(() => reject(new Error('no close within 10 s')), 10_000)
        })
        expect(code).toBe(1009)
        seen.push(`OCPP frame of 70 KB (limit ${OCPP_MAX_MESSAGE_BYTES}): closed 1009`)
        await probeAll()
        return seen.join('; ')
      },
    )
  }, 90_000)

  test('seeded fuzz over the wire: OCPP frames, OpenADR and OCPI JSON bodies never get a 5xx', async () => {
    await abuseCase(
      'Decoder fuzz over the wire',
      'seed 1610: 150 OCPP frames from an accepted station, 300 OpenADR bodies (POST collections, PUT objects), 300 OCPI credentials bodies with token A',
      async () => {
        const random = prng(1610)
        const statuses = { vtn: new Map<string, number>(), ocpi: new Map<string, number>() }
        const count = (map: Map<string, number>, status: string) =>
          map.set(status, (map.get(status) ?? 0) + 1)
        const vtnToken = await vtnBearer()
        const vtnPaths = [
          '/programs',
          '/events',
          '/reports',
          '/subscriptions',
          '/vens',
          '/resources',
          '/programs/1',
          '/events/x',
        ]
        for (let i = 0; i < 300; i++) {
          const path = vtnPaths[Math.floor(random() * vtnPaths.length)]!
          // Collections take POST, single objects PUT.
          const method = /\/[^/]+\/[^/]+$/.test(path) ? 'PUT' : 'POST'
          const response = await fetch(`http://127.0.0.1:${ports.vtn}/openadr3/3.1.0${path}`, {
            method,
            headers: { authorization: `Bearer ${vtnToken}`, 'content-type': 'application/json' },
            body: fuzzJson(random),
          })
          count(statuses.vtn, String(response.status))
          expect(response.status, `VTN case ${i} ${method} ${path}`).toBeLessThan(500)
          await response.body?.cancel()
        }
        for (let i = 0; i < 300; i++) {
          // Before registration only POST is allowed here; token A is the caller's.
          const method = random() < 0.85 ? 'POST' : 'PUT'
          const response = await fetch(`http://127.0.0.1:${ports.ocpi}/ocpi/2.2.1/credentials`, {
            method,
            headers: {
              authorization: `Token ${Buffer.from(ocpiToken).toString('base64')}`,
              'content-type': 'application/json',
            },
            body: fuzzJson(random),
          })
          const envelope = (await response.json()) as { status_code?: number }
          // OCPI answers most client errors with HTTP 200 and a 2xxx status code.
          count(statuses.ocpi, `${response.status}/${envelope.status_code}`)
          expect(response.status, `OCPI case ${i} ${method}`).toBeLessThan(500)
          expect(envelope.status_code, `OCPI case ${i} ${method}`).toBeLessThan(3000)
        }
        const ocpp = await fuzzOcpp(random, 150)
        const show = (map: Map<string, number>) =>
          [...map]
            .sort(([a], [b]) => a.localeCompare(b))
            .map(([status, n]) => `${status}×${n}`)
            .join(' ')
        return `VTN ${show(statuses.vtn)}; OCPI ${show(statuses.ocpi)}; OCPP ${ocpp}`
      },
    )
  }, 90_000)

  test('libp2p: 300 connections that never finish the handshake; a partner still peers', async () => {
    const partner = await startNode({ config: 'org = "Partner"\n' })
    await abuseCase(
      'libp2p handshake flood',
      '300 TCP connections from 127.0.0.2 to the libp2p port that send half a multistream header and stop, held while a handshake from 127.0.0.1 starts and a new partner peers',
      async () => {
        const half = await openMany(
          ports.libp2p,
          300,
          (socket) => socket.write('\x13/multistream/1.0'),
          100,
          '127.0.0.2',
        )
        // A fresh handshake from another address during the flood: the port still answers
        // multistream-select, since one address holds at most 16 pending handshakes.
        const fresh = await open(ports.libp2p, (socket) => socket.write('\x13/multistream/1.0.0\n'))
        await waitFor(
          () => fresh.answer.includes('/multistream/1.0.0'),
          3_000,
          'the fresh handshake answered',
        ).catch(() => {})
        const answered = fresh.answer.includes('/multistream/1.0.0')
        const answeredAfterMs = Date.now() - fresh.openedAt
        await api(node, 'POST', '/v1/peers', { card: await cardOf(partner), alias: 'partner' })
        await api(partner, 'POST', '/v1/peers', { card: await cardOf(node), alias: 'abuse' })
        const started = Date.now()
        await waitPeerState(node, 'partner', 'connected', 30_000)
        await waitPeerState(partner, 'abuse', 'connected', 30_000)
        const connectedS = (Date.now() - started) / 1000
        await waitFor(
          () => half.every((entry) => entry.closedAfterMs !== undefined),
          25_000,
          'half handshakes closed',
        )
        const atOnce = half.filter((entry) => entry.closedAfterMs! < 1_000).length
        const slowest = summary(half).maxS
        releaseAll()
        expect(answered, 'a handshake from another address during the flood is answered').toBe(true)
        // 16 pending from the flooding address, the rest refused at once; the 16 time out in 5 s.
        expect(atOnce).toBeGreaterThanOrEqual(300 - 16)
        expect(slowest).toBeLessThan(8)
        return (
          `a fresh handshake from another address during the flood was answered in ${answeredAfterMs} ms; ` +
          `the partner peered in ${connectedS.toFixed(1)} s; ${atOnce} of 300 closed at once, the rest ≤ ${slowest.toFixed(1)} s`
        )
      },
    )
  }, 120_000)
})

async function vtnBearer(): Promise<string> {
  const response = await fetch(`http://127.0.0.1:${ports.vtn}/openadr3/3.1.0/auth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'client_credentials',
      client_id: 'bl',
      client_secret: BL_SECRET,
    }),
  })
  return ((await response.json()) as { access_token: string }).access_token
}

/** A seeded JSON-ish value of odd shapes. */
function fuzzValue(random: () => number, depth = 0): unknown {
  const kind = Math.floor(random() * (depth > 3 ? 5 : 8))
  switch (kind) {
    case 0:
      return null
    case 1:
      return random() < 0.5
    case 2:
      return [0, -1, 1e308, 2 ** 63, 0.5, -0][Math.floor(random() * 6)]
    case 3:
      return ['', 'x'.repeat(Math.floor(random() * 3000)), '2024-02-30T25:61:00Z', 'PT-1H', '\u0000', '💥'][
        Math.floor(random() * 6)
      ]
    case 4:
      return new Date(Math.floor(random() * 2 ** 42)).toISOString()
    case 5:
      return Array.from({ length: Math.floor(random() * 4) }, () => fuzzValue(random, depth + 1))
    default: {
      const keys = [
        'programName',
        'programID',
        'intervals',
        'payloads',
        'type',
        'values',
        'targets',
        'eventName',
        'token',
        'url',
        'roles',
        'objectType',
        'id',
        'venName',
        'clientName',
        'callbackUrl',
        'objectOperations',
        'meterValue',
        'connectorId',
        'idTag',
        '__proto__',
      ]
      const object: Record<string, unknown> = {}
      for (let n = Math.floor(random() * 6); n > 0; n--)
        object[keys[Math.floor(random() * keys.length)]!] = fuzzValue(random, depth + 1)
      return object
    }
  }
}

/** A seeded body: JSON of odd shapes, sometimes cut short. */
function fuzzJson(random: () => number): string {
  const text = JSON.stringify(fuzzValue(random)) ?? 'null'
  if (random() < 0.15) return text.slice(0, Math.floor(random() * text.length))
  return text
}

/** An accepted station sends seeded frames; what it got back, counted by kind. */
async function fuzzOcpp(random: () => number, frames: number): Promise<string> {
  const socket = new WebSocket(`ws://127.0.0.1:${ports.ocpp}/ocpp/FUZZ`, ['ocpp1.6'], {
    headers: { authorization: `Basic ${Buffer.from(`FUZZ:${STATION_PASSWORD}`).toString('base64')}` },
  })
  const answers = new Map<string, number>()
  let closedWith: number | undefined
  socket.on('message', (data) => {
    let kind = 'other'
    try {
      const message = JSON.parse(String(data)) as unknown[]
      kind =
        message[0] === 3
          ? 'CALLRESULT'
          : message[0] === 4
            ? `CALLERROR ${String(message[2])}`
            : `type ${String(message[0])}`
    } catch {
      kind = 'not JSON'
    }
    answers.set(kind, (answers.get(kind) ?? 0) + 1)
  })
  socket.on('error', () => {})
  const closed = new Promise<void>((resolve) =>
    socket.on('close', (code) => {
      closedWith = code
      resolve()
    }),
  )
  await new Promise<void>((resolve, reject) => {
    socket.on('open', () => resolve())
    setTimeout(() => reject(new Error('the fuzzing station could not connect')), 10_000)
  })
  const actions = [
    'BootNotification',
    'Heartbeat',
    'MeterValues',
    'StatusNotification',
    'StartTransaction',
    'Authorize',
    'DataTransfer',
    'Nope',
  ]
  for (let i = 0; i < frames && closedWith === undefined; i++) {
    const shape = random()
    let frame: string
    if (shape < 0.6) {
      const action = actions[Math.floor(random() * actions.length)]!
      frame = JSON.stringify([2, `f${i}`, action, fuzzValue(random)])
    } else if (shape < 0.8) frame = fuzzJson(random)
    else if (shape < 0.9)
      frame = JSON.stringify([
        [2, 3, 4][Math.floor(random() * 3)],
        'x'.repeat(Math.floor(random() * 100)),
        {},
      ])
    else
      frame = String.fromCharCode(
        ...Array.from({ length: Math.floor(random() * 50) }, () => Math.floor(random() * 256)),
      )
    socket.send(frame)
    await Bun.sleep(5)
  }
  await Bun.sleep(1_000)
  socket.close()
  await Promise.race([closed, Bun.sleep(3_000)])
  const shown = [...answers]
    .sort(([, a], [, b]) => b - a)
    .map(([kind, n]) => `${kind}×${n}`)
    .join(', ')
  return `${frames} frames: ${shown}${closedWith !== undefined ? `; closed ${closedWith}` : ''}`
}

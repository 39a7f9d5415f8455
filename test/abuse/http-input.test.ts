/**
 * The HTTP API against malformed and hostile requests, sent byte for byte over TCP (fetch would
 * tidy most of them up): a client's mistake is a 4xx with a JSON reason, never a 500, and the
 * node stays healthy. The fuzz is seeded, so a failure names the seed and case that reproduce it.
 */
import { connect } from 'node:net'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { cleanupAll, type RunningNode, startNode } from '../helpers/node-process.ts'

const INGEST_TOKEN = 'ingest-token-abuse-0123456789'
let node: RunningNode
let port: number

beforeAll(async () => {
  node = await startNode({
    config: `org = "Abuse"\n[api]\nmax_body_bytes = "64KiB"\ningest_tokens = ["${INGEST_TOKEN}"]\n`,
  })
  port = Number(new URL(node.api).port)
})
afterAll(cleanupAll)

interface RawResponse {
  status: number
  headers: Record<string, string>
  body: string
}

/**
 * Send `request` as is and read one response: the status line, headers and what of the body came
 * within `settleMs` (streams such as /v1/tail do not end by themselves).
 */
function raw(request: string | Uint8Array, settleMs = 300, timeoutMs = 10_000): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    const chunks: Buffer[] = []
    let settle: ReturnType<typeof setTimeout> | undefined
    const finish = () => {
      clearTimeout(timer)
      clearTimeout(settle)
      socket.destroy()
      const text = Buffer.concat(chunks).toString('latin1')
      const end = text.indexOf('\r\n\r\n')
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(text)
      if (!status || end < 0) {
        reject(new Error(`no HTTP response: ${JSON.stringify(text.slice(0, 200))}`))
        return
      }
      const headers: Record<string, string> = {}
      for (const line of text.slice(0, end).split('\r\n').slice(1)) {
        const colon = line.indexOf(':')
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
      }
      resolve({ status: Number(status[1]), headers, body: text.slice(end + 4) })
    }
    const timer = setTimeout(finish, timeoutMs)
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk)
      if (Buffer.concat(chunks).includes('\r\n\r\n')) {
        clearTimeout(settle)
        settle = setTimeout(finish, settleMs)
      }
    })
    socket.on('end', finish)
    socket.on('error', () => finish())
    socket.write(request)
  })
}

const CRLF = '\r\n'
/** A request with `Host: 127.0.0.1:<port>` and `Connection: close` unless `headers` say otherwise. */
function request(method: string, target: string, headers: Record<string, string> = {}, body = ''): string {
  const all: Record<string, string> = { host: `127.0.0.1:${port}`, connection: 'close', ...headers }
  if (body !== '' && all['content-length'] === undefined)
    all['content-length'] = String(Buffer.byteLength(body, 'latin1'))
  const lines = Object.entries(all).map(([name, value]) => `${name}: ${value}`)
  return `${method} ${target} HTTP/1.1${CRLF}${lines.join(CRLF)}${CRLF}${CRLF}${body}`
}

const jsonError = (response: RawResponse): { error: string; message: string } => {
  expect(response.headers['content-type']).toBe('application/json')
  return JSON.parse(response.body) as { error: string; message: string }
}

async function healthy(): Promise<void> {
  expect(node.process.exitCode).toBeNull()
  expect((await node.fetch('/readyz', { token: null })).status).toBe(200)
}

describe('malformed requests are 400, not 500', () => {
  test('a path parameter with a broken percent-encoding', async () => {
    const auth = { authorization: `Bearer ${node.token}` }
    for (const target of [
      '/v1/resources/evse/%ff',
      '/v1/resources/%E0%A4%A/x',
      '/v1/peers/%',
      '/v1/peers/%zz',
    ]) {
      const method = target.startsWith('/v1/peers') ? 'DELETE' : 'GET'
      const response = await raw(request(method, target, auth))
      expect(response.status, target).toBe(400)
      expect(jsonError(response).error, target).toBe('InvalidPath')
    }
    const put = await raw(
      request('PUT', '/v1/resources/evse/%ff', { ...auth, 'content-type': 'application/json' }, '{}'),
    )
    expect(put.status).toBe(400)
    await healthy()
  })

  test('HTTP/1.0 without Host, an empty Host and a malformed Host', async () => {
    const noHost = await raw(`GET /livez HTTP/1.0${CRLF}${CRLF}`)
    expect(noHost.status).toBe(400)
    expect(jsonError(noHost).error).toBe('MissingHost')
    const empty = await raw(`GET /livez HTTP/1.1${CRLF}Host:${CRLF}Connection: close${CRLF}${CRLF}`)
    expect(empty.status).toBe(400)
    expect(jsonError(empty).error).toBe('MissingHost')
    for (const host of [
      'a b',
      'user@127.0.0.1',
      '127.0.0.1:99999',
      'local\thost',
      '127.0.0.1, evil.example',
      '%41',
    ]) {
      const response = await raw(request('GET', '/livez', { host }))
      expect(response.status, host).toBe(400)
      expect(jsonError(response).error, host).toBe('InvalidHost')
    }
    // Two Host headers are one too many (RFC 9112 §3.2).
    const twice = await raw(
      `GET /livez HTTP/1.1${CRLF}Host: 127.0.0.1${CRLF}Host: evil.example${CRLF}Connection: close${CRLF}${CRLF}`,
    )
    expect(twice.status).toBe(400)
    await healthy()
  })

  test('a declared oversize body gets 413 with the JSON reason, as a chunked one does', async () => {
    for (const length of [64 * 1024 + 1, 2 * 1024 * 1024, 10_000_000_000]) {
      const response = await raw(
        `POST /v1/telemetry HTTP/1.1${CRLF}Host: 127.0.0.1${CRLF}Authorization: Bearer ${node.token}${CRLF}` +
          `Content-Type: application/json${CRLF}Content-Length: ${length}${CRLF}${CRLF}[`,
      )
      expect(response.status, String(length)).toBe(413)
      const error = jsonError(response)
      expect(error.error).toBe('PayloadTooLarge')
      expect(error.message).toContain(String(64 * 1024))
      expect(response.headers.connection?.toLowerCase()).toBe('close')
    }
    await healthy()
  })
})

describe('Host names (DNS rebinding)', () => {
  test('health and metrics answer without a token only to loopback or configured host names', async () => {
    for (const host of [
      `127.0.0.1:${port}`,
      '127.0.0.1',
      '127.1.2.3',
      `localhost:${port}`,
      'LOCALHOST',
      `[::1]:${port}`,
    ]) {
      const response = await raw(request('GET', '/metrics', { host }))
      expect(response.status, host).toBe(200)
    }
    for (const host of [
      `evil.example:${port}`,
      'rebind.attacker.test',
      'localhost.evil.example',
      '127.0.0.1.nip.io',
    ]) {
      const response = await raw(request('GET', '/metrics', { host }))
      expect(response.status, host).toBe(421)
      const error = jsonError(response)
      expect(error.error).toBe('MisdirectedRequest')
      expect(error.message).toContain('api.allowed_hosts')
      expect(response.body).not.toContain('oe_node_ready')
    }
    // A token is what a rebinding page cannot have: with one, any well-formed name is served.
    const withToken = await raw(
      request('GET', '/metrics', { host: 'node.example.internal', authorization: `Bearer ${INGEST_TOKEN}` }),
    )
    expect(withToken.status).toBe(200)
    // The helpers' and the CLI's way in still works.
    expect((await node.fetch('/livez', { token: null })).status).toBe(200)
    expect((await node.fetch('/v1/status')).status).toBe(200)
  })
})

/** mulberry32: a small seeded generator, so a failing case can be replayed. */
function generator(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const SEED = 0x0e_40de
const CASES = 1500

describe('fuzzed requests', () => {
  test(`${CASES} seeded requests (seed ${SEED}): no 5xx, and the node stays healthy`, async () => {
    const random = generator(SEED)
    const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!
    const int = (max: number) => Math.floor(random() * max)
    const segment = (): string =>
      pick([
        'evse',
        'meter',
        'CS1-1',
        'toaster',
        '',
        '.',
        '..',
        '%',
        '%ff',
        '%zz',
        '%00',
        '%2F',
        '%C0%AF',
        '%E0%A4%A',
        '%F0%9F%98%80',
        '\u00e9',
        'a'.repeat(200),
        'x'.repeat(3000),
        '0'.repeat(64),
        'a'.repeat(64).replace(/a/g, () => '0123456789abcdef'[int(16)]!),
        String(int(1e6)),
        '*',
        '?',
        ';',
        '\\',
        "'",
        '"',
        '<script>',
        '{}',
      ])
    const prefixes = [
      '/livez',
      '/readyz',
      '/metrics',
      '/v1/telemetry',
      '/v1/resources',
      '/v1/status',
      '/v1/card',
      '/v1/tail',
      '/v1/peers',
      '/v1/agreements',
      '/v1/agreements/import',
      '/v1/plugins',
      '/v1/audit',
      '/',
      '',
      '//',
      '/v2',
    ]
    const queries = [
      '',
      '?',
      '?subject=',
      '?subject=%ff',
      '?subject=oe.tel.>',
      '?limit=-1',
      '?limit=1e9',
      '?a=%',
      '?from_start=1&subject=oe..x',
      '#frag',
    ]
    const methods = [
      'GET',
      'GET',
      'POST',
      'POST',
      'PUT',
      'DELETE',
      'PATCH',
      'HEAD',
      'OPTIONS',
      'TRACE',
      'FOO',
      'get',
      'M-SEARCH',
    ]
    const hosts = [
      `127.0.0.1:${port}`,
      `127.0.0.1:${port}`,
      `127.0.0.1:${port}`,
      'localhost',
      '[::1]',
      'evil.example',
      '',
      undefined,
      'a b',
      '127.0.0.1:0',
      `127.0.0.1:${port}, x`,
    ]
    const tokens = [undefined, undefined, node.token, node.token, INGEST_TOKEN, 'wrong', '']
    const types = [
      undefined,
      'application/json',
      'application/x-ndjson',
      'application/cbor',
      'text/plain',
      'application/json; charset=utf-16',
      ';;;',
      'multipart/form-data; boundary=x',
    ]
    const bodies = (): string =>
      pick([
        '',
        '[]',
        '{}',
        '[{}]',
        'null',
        '[',
        '{"card":"oe1xyz","alias":"Bad Alias"}',
        '{"peer":"nobody","purpose":"x","grants":["telemetry:kinds=meter"],"validUntil":"soon"}',
        '{"peer":"nobody","purpose":"x","grants":[{"data":"telemetry"}],"validUntil":1e300}',
        '{"reason":{"a":1}}',
        '{"site":"a.b","attrs":{"x":[1,{"y":null}]}}',
        `[${'{"kind":"meter","rid":"m1","q":"soc","v":250,"t":0},'.repeat(int(20))}{}]`,
        '\u00ff\u00fe',
        'x'.repeat(int(5000)),
        Array.from({ length: int(64) }, () => String.fromCharCode(int(256))).join(''),
      ])
    const failures: string[] = []
    const statuses = new Map<number, number>()
    for (let index = 0; index < CASES; index++) {
      const method = pick(methods)
      const path = `${pick(prefixes)}${Array.from({ length: pick([0, 0, 0, 1, 2, 3]) }, () => `/${segment()}`).join('')}${pick(queries)}`
      const headers: Record<string, string> = {}
      const host = pick(hosts)
      const token = pick(tokens)
      const type = pick(types)
      if (token !== undefined) headers.authorization = random() < 0.9 ? `Bearer ${token}` : token
      if (type !== undefined) headers['content-type'] = type
      const body = ['POST', 'PUT', 'PATCH'].includes(method) || random() < 0.1 ? bodies() : ''
      if (random() < 0.05) headers['content-length'] = String(1e12)
      let text: string
      if (host === undefined) {
        const lines = Object.entries({ ...headers, connection: 'close' }).map(
          ([name, value]) => `${name}: ${value}`,
        )
        text = `${method} ${path || '/'} HTTP/1.0${CRLF}${lines.join(CRLF)}${CRLF}${CRLF}${body}`
      } else {
        text = request(method, path || '/', { ...headers, host }, body)
      }
      // Bun (uWebSockets) closes the connection without an answer on methods it does not know.
      const unknownMethod = method === 'FOO' || method === 'get'
      try {
        const response = await raw(Buffer.from(text, 'latin1'), 50)
        statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1)
        if (response.status >= 500)
          failures.push(
            `case ${index}: ${JSON.stringify(text.slice(0, 300))} → ${response.status} ${response.body.slice(0, 200)}`,
          )
      } catch (error) {
        if (unknownMethod && (error as Error).message === 'no HTTP response: ""') continue
        failures.push(`case ${index}: ${JSON.stringify(text.slice(0, 300))} → ${(error as Error).message}`)
      }
    }
    expect(failures).toEqual([])
    // The fuzz reached the handlers, not only the early refusals.
    expect([...statuses.keys()].sort()).toEqual(
      expect.arrayContaining([200, 400, 401, 404, 405, 413, 415, 421]),
    )
    await healthy()
    expect((await node.fetch('/v1/status')).status).toBe(200)
  }, 300_000)
})

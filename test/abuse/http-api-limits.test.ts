/**
 * The API's own limits, on a real listener (the HttpApi alone, its components stubbed): slow
 * bodies are cut at the request timeout, requests in flight are bounded per address and overall
 * (429 / 503 with Retry-After, health still answered), bodies being read share a memory budget,
 * and deep JSON is refused before it is parsed.
 */
import { connect, type Socket } from 'node:net'
import { afterEach, describe, expect, test } from 'vitest'
import { HttpApi, type HttpApiInit } from '../../node/http-api.ts'
import { silentLogger } from '../../node/logger.ts'
import { createMetrics } from '../../node/metrics.ts'

const ADMIN = 'admin-token-for-limits-0123456789'
const running: HttpApi[] = []
const sockets: Socket[] = []

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy()
  for (const api of running.splice(0)) await api.stop()
})

async function startApi(init: Partial<HttpApiInit> = {}): Promise<HttpApi> {
  const api = new HttpApi(
    { listen: '127.0.0.1:0', maxBodyBytes: 1024 * 1024, adminToken: ADMIN, ingestTokens: [], ...init },
    {
      logger: silentLogger(),
      metrics: createMetrics(),
      dataPlane: () => undefined,
      federation: () => undefined,
      audit: () => undefined,
      plugins: () => undefined,
      health: async () => ({ ready: true, checks: {} }),
      status: async () => ({}),
      card: () => ({}),
    },
  )
  await api.start()
  running.push(api)
  return api
}

/** A POST whose head is sent at once and whose body never comes (or trickles). */
function stalledPost(
  api: HttpApi,
  length: number,
  first = '',
): Promise<{ socket: Socket; answer: Promise<string> }> {
  const { port, hostname } = new URL(api.url)
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => {
      socket.write(
        `POST /v1/telemetry HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${ADMIN}\r\n` +
          `Content-Type: application/json\r\nContent-Length: ${length}\r\n\r\n${first}`,
      )
      const answer = new Promise<string>((done) => {
        let text = ''
        socket.on('data', (chunk) => {
          text += chunk.toString()
        })
        socket.on('close', () => done(text))
      })
      resolve({ socket, answer })
    })
    socket.on('error', reject)
    sockets.push(socket)
  })
}

const statusOf = (text: string): number => Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0)

describe('timeouts', () => {
  test('a body that trickles in is cut at the request timeout; other clients are answered meanwhile', async () => {
    const api = await startApi({ requestTimeoutSeconds: 8 })
    const started = Date.now()
    const { socket, answer } = await stalledPost(api, 1000, '[')
    const trickle = setInterval(() => socket.write(' '), 1000)
    try {
      const health = await fetch(`${api.url}/readyz`)
      expect(health.status).toBe(200)
      await answer
      const seconds = (Date.now() - started) / 1000
      // Closed by the server (8 s, which Bun checks in steps of a few seconds), not by the test.
      expect(seconds).toBeGreaterThanOrEqual(4)
      expect(seconds).toBeLessThan(20)
    } finally {
      clearInterval(trickle)
    }
  }, 30_000)
})

describe('requests in flight', () => {
  test('past the per-address limit: 429 TooManyRequests with Retry-After; health still answers', async () => {
    const api = await startApi({ maxInFlightPerSource: 5 })
    const stalled = await Promise.all(Array.from({ length: 5 }, () => stalledPost(api, 100)))
    // Give the server a moment to register the five as in flight.
    await Bun.sleep(100)
    const refused = await fetch(`${api.url}/v1/telemetry`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: '[]',
    })
    expect(refused.status).toBe(429)
    expect(refused.headers.get('retry-after')).toBe('1')
    expect(await refused.json()).toMatchObject({ error: 'TooManyRequests' })
    expect((await fetch(`${api.url}/readyz`)).status).toBe(200)
    expect((await fetch(`${api.url}/livez`)).status).toBe(200)
    // Once the stalled ones are gone, requests are taken again.
    for (const { socket } of stalled) socket.destroy()
    await Bun.sleep(200)
    const again = await fetch(`${api.url}/v1/status`, { headers: { authorization: `Bearer ${ADMIN}` } })
    expect(again.status).toBe(200)
  })

  test('past the overall limit: 503 Overloaded', async () => {
    const api = await startApi({ maxInFlight: 3, maxInFlightPerSource: 100 })
    await Promise.all(Array.from({ length: 3 }, () => stalledPost(api, 100)))
    await Bun.sleep(100)
    const refused = await fetch(`${api.url}/v1/status`, { headers: { authorization: `Bearer ${ADMIN}` } })
    expect(refused.status).toBe(503)
    expect(await refused.json()).toMatchObject({ error: 'Overloaded' })
    expect((await fetch(`${api.url}/readyz`)).status).toBe(200)
  })

  test('bodies being read share a budget: a declared length that does not fit is 503 before it is read', async () => {
    const api = await startApi({ maxBodyBytes: 1024 * 1024, maxBodyBytesInFlight: 2 * 1024 * 1024 })
    // Two bodies of 1 MiB fill the budget (they never finish).
    await Promise.all([stalledPost(api, 1024 * 1024, '['), stalledPost(api, 1024 * 1024, '[')])
    await Bun.sleep(150)
    const third = await stalledPost(api, 1024 * 1024, '[')
    const text = await Promise.race([third.answer, Bun.sleep(5_000).then(() => '')])
    // The third is answered without waiting for its body.
    expect(statusOf(text)).toBe(503)
    expect(text).toContain('Overloaded')
    // Small bodies are not held against the budget.
    const small = await fetch(`${api.url}/v1/telemetry`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: 'not json',
    })
    expect(small.status).toBe(400)
  })
})

describe('JSON nesting', () => {
  test('nesting deeper than 64 is 400 NestingTooDeep on ingest, resources and admin bodies', async () => {
    const api = await startApi({ maxBodyBytes: 4 * 1024 * 1024 })
    const deep = (n: number) => `${'['.repeat(n)}${']'.repeat(n)}`
    const cases: [string, string, string][] = [
      ['POST', '/v1/telemetry', `[${deep(200_000)}]`],
      ['PUT', '/v1/resources/meter/m1', `{"attrs":${deep(1_000_000)}}`],
      ['POST', '/v1/agreements', `{"grants":${deep(1_000)}}`],
    ]
    for (const [method, path, body] of cases) {
      const response = await fetch(`${api.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
        body,
      })
      expect(response.status, path).toBe(400)
      expect(await response.json(), path).toMatchObject({ error: 'NestingTooDeep', maxDepth: 64 })
    }
    // Depth inside strings does not count.
    const quoted = await fetch(`${api.url}/v1/resources/meter/m1`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ attrs: { note: '['.repeat(1000) } }),
    })
    expect(quoted.status).not.toBe(400)
  })
})

/**
 * The HTTP API in process, with its components stubbed: what its init settings (api.max_records,
 * api.allowed_hosts, the listen host) change. The API against a real node is in test/.
 */
import { afterEach, describe, expect, test } from 'vitest'
import { HttpApi, type HttpApiInit } from './http-api.ts'
import { silentLogger } from './logger.ts'
import { createMetrics } from './metrics.ts'

const ADMIN = 'admin-token-0123456789abcdef'
const running: HttpApi[] = []
afterEach(async () => {
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

const get = (api: HttpApi, path: string, host: string) => fetch(`${api.url}${path}`, { headers: { host } })

describe('api.max_records', () => {
  test('a body with more records than maxRecords is 413 naming the limit, before the data plane is asked', async () => {
    const api = await startApi({ maxRecords: 3 })
    // 400 bytes of records, so the count is taken before parsing.
    const body = JSON.stringify(Array.from({ length: 4 }, () => ({ kind: 'meter', rid: 'x'.repeat(80) })))
    const response = await fetch(`${api.url}/v1/telemetry`, {
      method: 'POST',
      body,
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    })
    expect(response.status).toBe(413)
    expect(await response.json()).toEqual({
      error: 'TooManyRecords',
      message: expect.stringContaining('more than 3 records (api.max_records)'),
      maxRecords: 3,
    })
    // Three records get as far as the data plane, which this API has not got.
    const three = await fetch(`${api.url}/v1/telemetry`, {
      method: 'POST',
      body: JSON.stringify(JSON.parse(body).slice(1)),
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    })
    expect(three.status).toBe(200)
    expect(await three.json()).toMatchObject({ accepted: 0, rejected: 3 })
  })
})

describe('host names answered without a token', () => {
  test('loopback names and IP literals always; other names only when listed in allowedHosts', async () => {
    const api = await startApi({ allowedHosts: ['node.example.internal'] })
    for (const host of [
      '127.0.0.1',
      'localhost',
      '[::1]:7410',
      '10.1.2.3',
      '127.1',
      'node.example.internal:7410',
      'NODE.example.internal.',
    ]) {
      expect((await get(api, '/livez', host)).status, host).toBe(200)
    }
    for (const host of ['other.example.internal', 'example.internal', 'node.example.internal.evil.test']) {
      const response = await get(api, '/livez', host)
      expect(response.status, host).toBe(421)
      expect(((await response.json()) as { error: string }).error).toBe('MisdirectedRequest')
    }
  })
})

/**
 * The node's HTTP API against a real node process on a real (embedded) nats-server: what an
 * ingesting client and an operator would see, including every kind of bad input.
 */
import { encode as encodeCbor } from 'cbor-x'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import {
  cleanupAll,
  metricValue,
  type RunningNode,
  readSubject,
  startNode,
  telemetry,
} from './helpers/node-process.ts'

const INGEST_TOKEN = 'ingest-token-0123456789abcdef'
let node: RunningNode

beforeAll(async () => {
  node = await startNode({
    config: `org = "ApiTest"\n[api]\nmax_body_bytes = "256KiB"\ningest_tokens = ["${INGEST_TOKEN}"]\n`,
  })
})
afterAll(cleanupAll)

const postJson = (body: string, token?: string | null, type = 'application/json') =>
  node.fetch('/v1/telemetry', { method: 'POST', body, headers: { 'content-type': type }, token })

describe('health and metrics', () => {
  test('livez and readyz answer on loopback without a token', async () => {
    const live = await node.fetch('/livez', { token: null })
    expect(live.status).toBe(200)
    const ready = await node.fetch('/readyz', { token: null })
    expect(ready.status).toBe(200)
    const report = (await ready.json()) as { ready: boolean; checks: Record<string, { ok: boolean }> }
    expect(report.ready).toBe(true)
    expect(report.checks.nats?.ok).toBe(true)
    expect(report.checks.jetstream?.ok).toBe(true)
  })

  test('metrics are Prometheus text with oe_ names', async () => {
    const posted = await postJson(JSON.stringify(telemetry(3, { rid: () => 'metrics-1' })))
    expect(await posted.json()).toMatchObject({ accepted: 3 })
    const response = await node.fetch('/metrics', { token: null })
    expect(response.status).toBe(200)
    const text = await response.text()
    expect(metricValue(text, 'oe_ingest_records_total', { result: 'accepted' })).toBeGreaterThanOrEqual(3)
    expect(text).toContain('oe_http_requests_total')
  })
})

describe('authentication', () => {
  test('a missing token is 401 and nothing is stored', async () => {
    const response = await postJson(JSON.stringify(telemetry(2, { rid: () => 'noauth-1' })), null)
    expect(response.status).toBe(401)
    expect(response.headers.get('www-authenticate')).toContain('Bearer')
    expect(((await response.json()) as { error: string }).error).toBe('Unauthorized')
    // The same subjects, with the token: the read finds this one only.
    const allowed = await postJson(JSON.stringify([{ ...telemetry(1, { rid: () => 'noauth-1' })[0], v: 42 }]))
    expect(await allowed.json()).toMatchObject({ accepted: 1 })
    const stored = await readSubject(node, 'oe.tel.meter.noauth-1.>', 300)
    expect(stored.map((m) => m.data.v)).toEqual([42])
  })

  test('a wrong token is 401', async () => {
    const response = await postJson('[]', 'not-the-token-at-all')
    expect(response.status).toBe(401)
  })

  test('an ingest token from config may ingest but not read status', async () => {
    const ingest = await postJson(JSON.stringify(telemetry(2, { rid: () => 'ingest-token' })), INGEST_TOKEN)
    expect(ingest.status).toBe(200)
    expect(await ingest.json()).toEqual({ accepted: 2, rejected: 0, errors: [] })
    const status = await node.fetch('/v1/status', { token: INGEST_TOKEN })
    expect(status.status).toBe(401)
  })

  test('the admin token reads status', async () => {
    const status = await node.fetch('/v1/status')
    expect(status.status).toBe(200)
    const body = (await status.json()) as { org: string; nats: { url: string } }
    expect(body.org).toBe('ApiTest')
    expect(body.nats).toMatchObject({ connected: true, embedded: true })
    expect(body.nats.url).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/)
  })
})

describe('POST /v1/telemetry', () => {
  test('a JSON array is stored: every record appears once on oe.tel', async () => {
    const records = telemetry(500, { rid: (i) => `json-${i % 5}` })
    const response = await postJson(JSON.stringify(records))
    expect(await response.json()).toEqual({ accepted: 500, rejected: 0, errors: [] })
    const seen = await readSubject(node, 'oe.tel.meter.*.power')
    const ours = seen.filter((m) => m.subject.startsWith('oe.tel.meter.json-'))
    expect(ours).toHaveLength(500)
    expect(new Set(ours.map((m) => m.data.v)).size).toBe(500)
    expect(ours[0]).toEqual({ subject: 'oe.tel.meter.json-0.power', data: { v: 0, t: records[0]!.t } })
  })

  test('NDJSON and CBOR bodies are accepted', async () => {
    const ndjson = telemetry(10, { rid: () => 'ndjson-1' })
      .map((r) => JSON.stringify(r))
      .join('\n')
    const a = await postJson(`${ndjson}\n\n`, undefined, 'application/x-ndjson')
    expect(await a.json()).toMatchObject({ accepted: 10, rejected: 0 })
    const cbor = encodeCbor(telemetry(7, { rid: () => 'cbor-1' }))
    const b = await node.fetch('/v1/telemetry', {
      method: 'POST',
      body: cbor,
      headers: { 'content-type': 'application/cbor' },
    })
    expect(await b.json()).toMatchObject({ accepted: 7, rejected: 0 })
    expect(await readSubject(node, 'oe.tel.meter.ndjson-1.>', 300)).toHaveLength(10)
    expect(await readSubject(node, 'oe.tel.meter.cbor-1.>', 300)).toHaveLength(7)
  })

  test('a large CBOR batch with non-ASCII units is stored and the node stays up', async () => {
    // cbor-x's native extractor aborted Bun on exactly this input; the node must never load it.
    const records = telemetry(1000, { rid: () => 'cbor-temp', q: 'temperature' }).map((r) => ({
      ...r,
      u: '°C',
    }))
    const response = await node.fetch('/v1/telemetry', {
      method: 'POST',
      body: encodeCbor(records),
      headers: { 'content-type': 'application/cbor' },
    })
    expect(await response.json()).toMatchObject({ accepted: 1000, rejected: 0 })
    const stored = await readSubject(node, 'oe.tel.meter.cbor-temp.temperature', 300)
    expect(stored).toHaveLength(1000)
    expect(stored[999]!.data).toMatchObject({ v: 999, u: '°C' })
    expect((await node.fetch('/livez')).status).toBe(200)
  })

  test('invalid records are rejected with index and reason; the valid ones are kept', async () => {
    const now = Date.now()
    const good = (i: number) => ({ kind: 'meter', rid: 'mixed-1', q: 'power', v: i, t: now })
    const body = [
      good(0),
      { kind: 'meter', rid: 'mixed-1', q: 'watts', v: 1, t: now },
      good(2),
      { kind: 'meter', rid: 'bad.rid', q: 'power', v: 1, t: now },
      { kind: 'meter', rid: 'mixed-1', q: 'power', v: 'NaN', t: now },
      { kind: 'meter', rid: 'mixed-1', q: 'power', v: 1, t: now + 10 * 60 * 1000 },
      'not a record',
      good(7),
    ]
    // JSON cannot carry NaN/Infinity; CBOR can, so check a non-finite value there too.
    const response = await postJson(JSON.stringify(body))
    expect(response.status).toBe(200)
    const result = (await response.json()) as {
      accepted: number
      rejected: number
      errors: { index: number; reason: string }[]
    }
    expect(result.accepted).toBe(3)
    expect(result.rejected).toBe(5)
    expect(result.errors.map((e) => e.index)).toEqual([1, 3, 4, 5, 6])
    expect(result.errors[0]!.reason).toMatch(/^q: unknown quantity 'watts'/)
    expect(result.errors[1]!.reason).toMatch(/^rid: /)
    expect(result.errors[2]!.reason).toMatch(/^v: must be a number/)
    expect(result.errors[3]!.reason).toMatch(/^t: .*future/)
    expect(result.errors[4]!.reason).toMatch(/must be an object/)
    const nonFinite = await node.fetch('/v1/telemetry', {
      method: 'POST',
      body: encodeCbor([{ kind: 'meter', rid: 'mixed-1', q: 'power', v: Number.POSITIVE_INFINITY, t: now }]),
      headers: { 'content-type': 'application/cbor' },
    })
    expect(await nonFinite.json()).toMatchObject({
      accepted: 0,
      rejected: 1,
      errors: [{ index: 0, reason: 'v: must be finite, got Infinity' }],
    })
    const stored = await readSubject(node, 'oe.tel.meter.mixed-1.>', 300)
    expect(stored.map((m) => m.data.v).sort()).toEqual([0, 2, 7])
  })

  test('implausible readings are rejected per record with the reason; the plausible ones are stored', async () => {
    const now = Date.now()
    const reading = (q: string, v: number, t = now) => ({ kind: 'battery', rid: 'plausible-1', q, v, t })
    const body = [
      reading('soc', 55),
      reading('soc', 120),
      reading('soc', -1),
      reading('energy_import', -5),
      reading('energy_export_l2', -0.5),
      reading('energy_import', 1234),
      reading('power', -3000, 0),
      reading('power', -3000, Math.floor(now / 1000)),
      reading('power', -3000),
    ]
    const response = await postJson(JSON.stringify(body))
    expect(response.status).toBe(200)
    const result = (await response.json()) as {
      accepted: number
      errors: { index: number; reason: string }[]
    }
    expect(result.accepted).toBe(3)
    expect(result.errors).toEqual([
      { index: 1, reason: 'v: soc must be between 0 and 100 %, got 120' },
      { index: 2, reason: 'v: soc must be between 0 and 100 %, got -1' },
      { index: 3, reason: 'v: energy_import is a cumulative register and cannot be negative, got -5' },
      { index: 4, reason: 'v: energy_export_l2 is a cumulative register and cannot be negative, got -0.5' },
      { index: 6, reason: expect.stringMatching(/^t: 0 is before 2000-01-01T00:00:00Z/) },
      {
        index: 7,
        reason: expect.stringMatching(/^t: \d+ is before 2000-01-01T00:00:00Z: epoch milliseconds expected/),
      },
    ])
    const stored = await readSubject(node, 'oe.tel.battery.plausible-1.>', 300)
    expect(stored.map((m) => [m.subject.split('.').at(-1), m.data.v]).sort()).toEqual([
      ['energy_import', 1234],
      ['power', -3000],
      ['soc', 55],
    ])
  })

  test.each([
    ['application/json', '[{"kind":"meter",', /malformed JSON/],
    ['application/json', '{"kind":"meter"}', /must be an array/],
    ['application/x-ndjson', '{"kind":"meter","rid":"a","q":"power","v":1,"t":1}\n{oops}\n', /line 2/],
  ])('a malformed %s body is 400 with the reason', async (type, body, reason) => {
    const response = await postJson(body, undefined, type)
    expect(response.status).toBe(400)
    const error = (await response.json()) as { error: string; message: string }
    expect(error.error).toBe('DecodeError')
    expect(error.message).toMatch(reason)
  })

  test('a malformed CBOR body is 400', async () => {
    const response = await node.fetch('/v1/telemetry', {
      method: 'POST',
      body: new Uint8Array([0x9f, 0xa2, 0x61, 0x6b, 0xff, 0x1c]),
      headers: { 'content-type': 'application/cbor' },
    })
    expect(response.status).toBe(400)
    expect(((await response.json()) as { error: string }).error).toBe('DecodeError')
  })

  test('an unsupported content type is 415', async () => {
    const response = await postJson('<records/>', undefined, 'application/xml')
    expect(response.status).toBe(415)
  })

  test('an oversized body is 413 and the node keeps serving', async () => {
    const big = JSON.stringify(telemetry(5000, { rid: () => 'too-big' }))
    expect(big.length).toBeGreaterThan(256 * 1024)
    const response = await postJson(big)
    expect(response.status).toBe(413)
    expect(((await response.json()) as { error: string }).error).toBe('PayloadTooLarge')
    // Chunked upload without a content-length is cut off too.
    const encoder = new TextEncoder()
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < 40; i++)
          controller.enqueue(encoder.encode(big.slice(i * 10_000, (i + 1) * 10_000)))
        controller.close()
      },
    })
    const chunked = await node.fetch('/v1/telemetry', {
      method: 'POST',
      body: stream,
      headers: { 'content-type': 'application/json' },
    })
    expect(chunked.status).toBe(413)
    // The node keeps serving: a small body for the same subjects is stored, and it is all they hold.
    const after = await postJson(JSON.stringify([{ ...telemetry(1, { rid: () => 'too-big' })[0], v: 4242 }]))
    expect(await after.json()).toMatchObject({ accepted: 1 })
    const stored = await readSubject(node, 'oe.tel.meter.too-big.>', 300)
    expect(stored.map((m) => m.data.v)).toEqual([4242])
  })

  test('a wrong method is 405 with Allow; an unknown path is 404', async () => {
    const wrongMethod = await node.fetch('/v1/telemetry', { method: 'GET' })
    expect(wrongMethod.status).toBe(405)
    expect(wrongMethod.headers.get('allow')).toBe('POST')
    const unknown = await node.fetch('/v1/nothing-here')
    expect(unknown.status).toBe(404)
  })
})

describe('standing data', () => {
  test('PUT stores the resource in KV and publishes it on oe.std', async () => {
    const put = await node.fetch('/v1/resources/evse/CS001-1', {
      method: 'PUT',
      body: JSON.stringify({ site: 'site-7', name: 'Bay 1', attrs: { maxPowerW: 22000, vendor: 'ACME' } }),
      headers: { 'content-type': 'application/json' },
    })
    expect(put.status).toBe(200)
    const get = await node.fetch('/v1/resources/evse/CS001-1')
    const { resource } = (await get.json()) as { resource: Record<string, unknown> }
    expect(resource).toMatchObject({
      kind: 'evse',
      rid: 'CS001-1',
      site: 'site-7',
      attrs: { maxPowerW: 22000 },
    })
    const published = await readSubject(node, 'oe.std.evse.CS001-1', 300)
    expect(published).toHaveLength(1)
    expect(published[0]!.data).toMatchObject({ name: 'Bay 1', attrs: { vendor: 'ACME' } })
  })

  test('bad standing data is 400 naming the field', async () => {
    const badKind = await node.fetch('/v1/resources/toaster/x1', { method: 'PUT', body: '{}' })
    expect(badKind.status).toBe(400)
    expect(await badKind.json()).toMatchObject({ error: 'ValidationError', path: 'kind' })
    const badAttrs = await node.fetch('/v1/resources/meter/m1', { method: 'PUT', body: '{"attrs":[1,2]}' })
    expect(await badAttrs.json()).toMatchObject({ error: 'ValidationError', path: 'attrs' })
    const missing = await node.fetch('/v1/resources/meter/never-put')
    expect(missing.status).toBe(404)
  })
})

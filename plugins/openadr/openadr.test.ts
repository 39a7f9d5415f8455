/**
 * Unit tests of the OpenADR plugins' pure parts: resource ids, unit conversion, report →
 * telemetry, interval timing, visibility rules, the 3.0.1 target mapping, lenient reading,
 * OAuth tokens, webhook retries and the report schedule; and the plugin compliance suite.
 */
import { describe, expect, test } from 'vitest'
import { runPluginCompliance } from '../compliance.ts'
import { parseBasic, TokenIssuer } from './auth.ts'
import { VtnClient } from './client.ts'
import { prepareCommon, stripNulls, toUtc } from './codec.ts'
import { contractFor } from './contract.ts'
import { openadrVenPlugin, openadrVtnPlugin } from './index.ts'
import type { StoredObject } from './model.ts'
import {
  limitToEventBody,
  limitWatts,
  reportToTelemetry,
  reportValueToReading,
  resourceIdFor,
} from './normalise.ts'
import { createMemoryStore, fixedId, newId, uniqueKey, VtnState } from './state.ts'
import { startWebhookReceiver } from './testing.ts'
import { changePoints, durationMs, resolveEvent, valuesAt } from './timing.ts'
import { targetsFromValuesMaps, targetsToValuesMaps, v301 } from './v301.ts'
import { v310 } from './v310.ts'
import { reportSchedule } from './ven.ts'
import { mayWrite, targetView } from './visibility.ts'
import { WebhookSender } from './webhooks.ts'

const RID = /^[A-Za-z0-9][A-Za-z0-9_:-]{0,127}$/
const quiet = { child: () => quiet, debug: () => {}, info: () => {}, warn: () => {}, error: () => {} }

describe('resource ids', () => {
  test('readable, §5-valid, deterministic, and apart for names that slug alike', () => {
    const id = resourceIdFor('VEN 1', 'Battery #2')
    expect(id).toMatch(/^VEN-1_Battery-2-[0-9a-f]{12}$/)
    expect(resourceIdFor('VEN 1', 'Battery #2')).toBe(id)
    const names: [string, string][] = [
      ['ven 1', 'pv'],
      ['ven-1', 'pv'],
      ['ven_1', 'pv'],
      ['ven', '1_pv'],
      ['.hidden', '..'],
      ['ünïcødé', '電池'],
      ['x'.repeat(128), 'y'.repeat(128)],
    ]
    const ids = names.map(([ven, resource]) => resourceIdFor(ven, resource))
    for (const rid of ids) {
      expect(rid).toMatch(RID)
      expect(rid).not.toContain('.')
      expect(rid.length).toBeLessThanOrEqual(94)
    }
    expect(new Set(ids).size).toBe(ids.length)
  })
})

describe('units and reports', () => {
  test('payload types and units become canonical quantities in canonical units', () => {
    expect(reportValueToReading('DEMAND', 'KW', 2.5, 60_000)).toEqual({ q: 'power', v: 2500 })
    expect(reportValueToReading('DEMAND', undefined, 1.2, undefined)).toEqual({ q: 'power', v: 1200 })
    expect(reportValueToReading('DEMAND', 'W', 700, undefined)).toEqual({ q: 'power', v: 700 })
    expect(reportValueToReading('USAGE', 'KWH', 0.5, 900_000)).toEqual({ q: 'power', v: 2000 })
    expect(reportValueToReading('USAGE', 'KWH', 0.5, undefined)).toBeUndefined()
    expect(reportValueToReading('READING', 'KWH', 12.5, undefined)).toEqual({ q: 'energy_import', v: 12_500 })
    expect(reportValueToReading('READING', 'VOLTS', 231, undefined)).toEqual({ q: 'voltage', v: 231 })
    expect(reportValueToReading('READING', 'KVAR', 1.5, undefined)).toEqual({ q: 'reactive_power', v: 1500 })
    expect(reportValueToReading('STORAGE_CHARGE_LEVEL', 'PERCENT', 0.42, undefined)).toEqual({
      q: 'soc',
      v: 42,
    })
    expect(reportValueToReading('STORAGE_CHARGE_LEVEL', undefined, 42, undefined)).toEqual({
      q: 'soc',
      v: 42,
    })
    expect(reportValueToReading('SETPOINT', 'KW', 3.5, undefined)).toEqual({ q: 'power_limit', v: 3500 })
    expect(reportValueToReading('DEMAND', 'THERMS', 1, undefined)).toBeUndefined()
    expect(reportValueToReading('OPERATING_STATE', undefined, 1, undefined)).toBeUndefined()
    expect(reportValueToReading('DEMAND', 'KW', 'x', undefined)).toBeUndefined()
    expect(limitWatts(7.4, 'KW')).toBe(7400)
    expect(limitWatts(7.4, undefined)).toBe(7400)
    expect(limitWatts(-1, 'KW')).toBeUndefined()
  })

  test('a report: intervals inherited and following, sub-intervals, unknown resources skipped', () => {
    const t0 = Date.parse('2026-01-01T10:00:00Z')
    const target = { kind: 'der' as const, rid: 'r1' }
    const { records, skipped } = reportToTelemetry(
      {
        payloadDescriptors: [{ payloadType: 'DEMAND', units: 'KW' }],
        resources: [
          {
            resourceName: 'a',
            intervalPeriod: { start: new Date(t0).toISOString(), duration: 'PT15M' },
            intervals: [
              { id: 0, payloads: [{ type: 'DEMAND', values: [1, 2, 3] }] },
              { id: 1, payloads: [{ type: 'DEMAND', values: [4] }] },
            ],
          },
          { resourceName: 'b', intervals: [{ id: 0, payloads: [{ type: 'DEMAND', values: [9] }] }] },
        ],
      },
      (name) => (name === 'a' ? target : undefined),
      [],
      t0 + 3_600_000,
    )
    expect(records.map((record) => [record.v, record.t])).toEqual([
      [1000, t0],
      [2000, t0 + 300_000],
      [3000, t0 + 600_000],
      [4000, t0 + 900_000],
    ])
    expect(skipped).toBe(1)
  })

  test('limit_power → event body: kW, now to until, targeted, asking for a setpoint report', () => {
    const now = Date.parse('2026-01-01T10:00:00Z')
    const body = limitToEventBody({
      programID: 'p',
      rid: 'r1',
      target: 'oe:r1',
      watts: 3500,
      until: now + 1_800_000,
      now,
    })
    expect(body).toMatchObject({
      programID: 'p',
      targets: ['oe:r1'],
      intervalPeriod: { start: '2026-01-01T10:00:00.000Z', duration: 'PT1800S' },
      intervals: [{ id: 0, payloads: [{ type: 'IMPORT_CAPACITY_LIMIT', values: [3.5] }] }],
    })
    expect(
      limitToEventBody({ programID: 'p', rid: 'r1', target: 't', watts: 1, now }).intervalPeriod,
    ).toMatchObject({
      duration: 'P9999Y',
    })
    for (const version of ['3.1.0', '3.0.1'] as const) {
      // The body is a valid event request in both versions.
      const codec = version === '3.1.0' ? v310 : v301
      const prepared = codec.prepare(
        'event',
        version === '3.1.0' ? body : { ...body, targets: targetsToValuesMaps(body.targets as string[]) },
        { clientId: 'bl', role: 'bl' },
      )
      expect(prepared).toBeTruthy()
    }
  })
})

describe('interval timing', () => {
  const t0 = Date.parse('2026-03-01T00:00:00Z')
  const H = 3_600_000

  test('durations, P9999Y as infinity, calendar years and months', () => {
    expect(durationMs('PT1H30M')).toBe(1.5 * H)
    expect(durationMs('P1DT0.5S')).toBe(24 * H + 500)
    expect(durationMs('P2W')).toBe(14 * 24 * H)
    expect(durationMs('P9999Y')).toBe(Number.POSITIVE_INFINITY)
    expect(durationMs('P1M', Date.parse('2026-02-01T00:00:00Z'))).toBe(28 * 24 * H)
    expect(durationMs('1H')).toBeUndefined()
  })

  test('intervals inherit the event period, follow each other, and override it', () => {
    const resolved = resolveEvent(
      {
        intervalPeriod: { start: new Date(t0).toISOString(), duration: 'PT1H' },
        intervals: [
          { id: 0, payloads: [{ type: 'PRICE', values: [0.17] }] },
          { id: 1, intervalPeriod: { duration: 'PT2H' }, payloads: [{ type: 'PRICE', values: [0.22] }] },
          { id: 7, payloads: [{ type: 'PRICE', values: [0.3] }] },
          { id: 8, intervalPeriod: { start: new Date(t0 + 10 * H).toISOString() }, payloads: [] },
        ],
      },
      t0 - H,
    )
    expect(resolved.intervals.map((i) => [i.id, i.start - t0, i.end - t0])).toEqual([
      [0, 0, H],
      [1, H, 3 * H],
      [7, 3 * H, 4 * H],
      [8, 10 * H, 11 * H],
    ])
    expect(valuesAt(resolved, t0 + 2 * H).map((v) => v.value)).toEqual([0.22])
    expect(valuesAt(resolved, t0 - 1)).toEqual([])
    expect(changePoints(resolved, t0 - 1).slice(0, 4)).toEqual([t0, t0 + H, t0 + 3 * H, t0 + 4 * H])
  })

  test("'do it now': the beginning of time on the first interval starts when the event is read", () => {
    const resolved = resolveEvent(
      {
        intervals: [
          {
            id: 0,
            intervalPeriod: { start: '0001-01-01T00:00:00Z', duration: 'P9999Y' },
            payloads: [{ type: 'SIMPLE', values: [3] }],
          },
        ],
      },
      t0,
    )
    expect(resolved.start).toBe(t0)
    expect(resolved.end).toBe(Number.POSITIVE_INFINITY)
    expect(valuesAt(resolved, t0 + 1e9)[0]!.value).toBe(3)
    // At the event level it is a real time, long past: cancelled.
    const cancelled = resolveEvent(
      {
        intervalPeriod: { start: '0001-01-01T00:00:00Z', duration: 'PT0S' },
        intervals: [{ id: 0, payloads: [] }],
      },
      t0,
    )
    expect(cancelled.end).toBeLessThan(0)
  })

  test('several values split an interval; randomizeStart shifts every following start alike', () => {
    const split = resolveEvent(
      {
        intervals: [
          {
            id: 0,
            intervalPeriod: { start: new Date(t0).toISOString(), duration: 'PT3H' },
            payloads: [{ type: 'PRICE', values: [0.17, 0.03, 0.11] }],
          },
        ],
      },
      t0,
    )
    expect(valuesAt(split, t0 + 1.5 * H)).toMatchObject([{ value: 0.03, start: t0 + H, end: t0 + 2 * H }])
    const shifted = resolveEvent(
      {
        intervalPeriod: { start: new Date(t0).toISOString(), duration: 'PT1H', randomizeStart: 'PT10M' },
        intervals: [
          { id: 0, payloads: [] },
          { id: 1, payloads: [] },
          { id: 2, intervalPeriod: { start: new Date(t0 + 5 * H).toISOString() }, payloads: [] },
        ],
      },
      t0,
      (range) => {
        expect(range).toBe(600_000)
        return -240_000
      },
    )
    expect(shifted.intervals.map((i) => i.start - t0)).toEqual([-240_000, H - 240_000, 5 * H - 240_000])
  })

  test('event.duration loops the intervals', () => {
    const looped = resolveEvent(
      {
        intervalPeriod: { start: new Date(t0).toISOString(), duration: 'PT1H' },
        duration: 'P7D',
        intervals: [
          { id: 0, payloads: [{ type: 'PRICE', values: [1] }] },
          { id: 1, payloads: [{ type: 'PRICE', values: [2] }] },
        ],
      },
      t0,
    )
    expect(valuesAt(looped, t0 + 24 * H + 30 * 60_000)[0]).toMatchObject({ value: 1, start: t0 + 24 * H })
    expect(valuesAt(looped, t0 + 25 * H)[0]!.value).toBe(2)
    expect(valuesAt(looped, t0 + 8 * 24 * H)).toEqual([])
  })
})

describe('visibility', () => {
  const ven = { clientId: 'v1', role: 'ven' as const }
  const bl = { clientId: 'b', role: 'bl' as const }
  test('targets: untargeted for all, granted and asked narrow, hidden beyond the grant', () => {
    expect(targetView(ven, undefined, undefined, undefined)).toEqual({ visible: true })
    expect(targetView(ven, undefined, new Set(['g1']), ['g1'])).toEqual({ visible: false })
    expect(targetView(ven, ['g1'], undefined, undefined)).toEqual({ visible: false })
    expect(targetView(ven, ['g1', 'g2'], new Set(['g1', 'g3']), undefined)).toEqual({
      visible: true,
      targets: ['g1'],
    })
    expect(targetView(ven, ['g1', 'g3'], new Set(['g1', 'g3']), ['g3'])).toEqual({
      visible: true,
      targets: ['g3'],
    })
    expect(targetView(ven, ['g2'], new Set(['g1']), ['g2'])).toEqual({ visible: false })
    expect(targetView(bl, ['g2'], undefined, undefined)).toEqual({ visible: true, targets: ['g2'] })
    expect(targetView(bl, ['g2'], undefined, ['g1'])).toEqual({ visible: false })
  })
  test('who writes what', () => {
    expect(mayWrite(ven, 'program', 'create')).toBe(false)
    expect(mayWrite(ven, 'event', 'update')).toBe(false)
    expect(mayWrite(bl, 'report', 'create')).toBe(false)
    expect(mayWrite(ven, 'report', 'create')).toBe(true)
    expect(mayWrite(ven, 'ven', 'create')).toBe(true)
    expect(mayWrite(bl, 'resource', 'delete')).toBe(true)
  })
})

describe('lenient in', () => {
  test('nulls read as absent, provisioned fields ignored, timestamps made UTC', () => {
    expect(stripNulls({ a: null, b: { c: null, d: 1 }, e: [null, 2] })).toEqual({ b: { d: 1 }, e: [null, 2] })
    expect(toUtc('2026-01-01T01:00:00+01:00')).toBe('2026-01-01T00:00:00.000Z')
    expect(toUtc('2026-01-01T01:00:00+0100')).toBe('2026-01-01T00:00:00.000Z')
    expect(toUtc('2026-01-01T01:00:00')).toBe('2026-01-01T01:00:00.000Z')
    expect(toUtc('0001-01-01')).toBe('0001-01-01T00:00:00.000Z')
    expect(toUtc('not a date')).toBe('not a date')
    expect(
      prepareCommon({
        id: 'x',
        objectType: 'EVENT',
        createdDateTime: 'y',
        intervalPeriod: { start: '2026-01-01T00:00:00-05:00' },
      }),
    ).toEqual({ intervalPeriod: { start: '2026-01-01T05:00:00.000Z' } })
  })
  test('3.0.1 valuesMap targets ↔ target strings', () => {
    const maps = [
      { type: 'GROUP', values: ['g1', 'g2'] },
      { type: 'TARGET', values: ['plain'] },
    ]
    const strings = targetsFromValuesMaps(maps)!
    expect(strings).toEqual(['GROUP:g1', 'GROUP:g2', 'plain'])
    expect(targetsToValuesMaps(strings)).toEqual(maps)
    expect(v301.queryTargets({ targetType: 'GROUP', targetValues: ['g1'] })).toEqual(['GROUP:g1'])
    expect(v310.queryTargets({ targets: ['a', 'b'] })).toEqual(['a', 'b'])
  })
})

describe('OAuth tokens', () => {
  test('form and Basic credentials, wrong ones refused, tokens expire', async () => {
    let now = 1_000_000
    const issuer = new TokenIssuer(
      { clients: { 'ven 1': { secret: 's3cret:x', role: 'ven' } }, lifetimeS: 60 },
      { store: createMemoryStore(), now: () => now },
    )
    const form = new URLSearchParams({
      grant_type: 'client_credentials',
      client_id: 'ven 1',
      client_secret: 's3cret:x',
    })
    const issued = await issuer.issue(form, null)
    expect(issued).toMatchObject({ ok: true, expiresIn: 60 })
    const basic = `Basic ${Buffer.from('ven+1:s3cret%3Ax').toString('base64')}`
    expect(parseBasic(basic)).toEqual({ id: 'ven 1', secret: 's3cret:x' })
    expect(
      await issuer.issue(new URLSearchParams({ grant_type: 'client_credentials' }), basic),
    ).toMatchObject({ ok: true })
    expect(
      await issuer.issue(new URLSearchParams({ ...Object.fromEntries(form), client_secret: 'no' }), null),
    ).toMatchObject({
      ok: false,
      status: 401,
      error: 'invalid_client',
    })
    expect(await issuer.issue(new URLSearchParams({ client_id: 'ven 1' }), null)).toMatchObject({
      ok: false,
      status: 400,
    })
    const token = (issued as { accessToken: string }).accessToken
    expect(await issuer.verify(token)).toMatchObject({ clientId: 'ven 1', role: 'ven' })
    now += 60_000
    expect(await issuer.verify(token)).toBeUndefined()
    expect(await issuer.verify('made-up')).toBeUndefined()
  })
})

describe('webhooks', () => {
  test('retried with back-off until delivered; 4xx other than 408/429 is final', async () => {
    const receiver = startWebhookReceiver()
    const results: { delivered: boolean; attempts: number }[] = []
    const sender = new WebhookSender(
      { attempts: 4, timeoutMs: 2000, firstBackoffMs: 20 },
      { logger: quiet, onResult: (_delivery, outcome) => results.push(outcome) },
    )
    try {
      receiver.failNext(2)
      sender.send({ url: receiver.url, body: { n: 1 }, bearerToken: 'tok' })
      await expect.poll(() => results.length, { timeout: 5000 }).toBe(1)
      expect(results[0]).toEqual({ delivered: true, attempts: 3, status: 200 })
      expect(receiver.received[0]).toEqual({ body: { n: 1 }, authorization: 'Bearer tok' })
      receiver.failNext(1, 404)
      sender.send({ url: receiver.url, body: { n: 2 } })
      await expect.poll(() => results.length, { timeout: 5000 }).toBe(2)
      expect(results[1]).toEqual({ delivered: false, attempts: 1, status: 404 })
    } finally {
      await sender.stop()
      receiver.stop()
    }
  })
})

describe('report schedule', () => {
  const intervals = Array.from({ length: 6 }, (_, i) => ({
    id: i,
    start: i * 10,
    end: (i + 1) * 10,
    payloads: [],
  }))
  test('defaults: one historical report at the end of the last interval', () => {
    expect(reportSchedule({ payloadType: 'USAGE' }, intervals, 0)).toEqual([
      { index: 0, at: 60, covers: [0, 1, 2, 3, 4, 5] },
    ])
  })
  test('periodic, rolling forecast, ad hoc', () => {
    expect(
      reportSchedule(
        { payloadType: 'USAGE', startInterval: 1, numIntervals: 2, frequency: 2, repeat: 3 },
        intervals,
        0,
      ),
    ).toEqual([
      { index: 0, at: 20, covers: [0, 1] },
      { index: 1, at: 40, covers: [2, 3] },
      { index: 2, at: 60, covers: [4, 5] },
    ])
    expect(
      reportSchedule(
        {
          payloadType: 'DEMAND',
          startInterval: 0,
          numIntervals: 3,
          frequency: 1,
          repeat: 3,
          historical: false,
        },
        intervals,
        0,
      ),
    ).toEqual([
      { index: 0, at: 0, covers: [0, 1, 2] },
      { index: 1, at: 10, covers: [1, 2, 3] },
      { index: 2, at: 20, covers: [2, 3, 4] },
    ])
    expect(reportSchedule({ payloadType: 'DEMAND', frequency: 0 }, intervals, 33)).toEqual([
      { index: 0, at: 33, covers: [] },
    ])
  })
})

test('object ids are URL safe and in creation order', () => {
  const ids = Array.from({ length: 50 }, (_, i) => newId(1_700_000_000_000 + i))
  for (const id of ids) expect(id).toMatch(/^[a-zA-Z0-9_-]{1,128}$/)
  expect([...ids].sort()).toEqual(ids)
})

runPluginCompliance(openadrVtnPlugin, {
  validConfig: { listen: '127.0.0.1:0', clients: { bl: { secret: 'bl-secret-1', role: 'bl' } } },
  invalidConfig: { listen: 'nowhere', clients: { bl: { secret: 'short', role: 'admin' } } },
})

runPluginCompliance(openadrVenPlugin, {
  validConfig: {
    vtn_url: 'http://127.0.0.1:9/openadr3/3.1.0',
    client_id: 'ven-1',
    client_secret: 'secret',
    ven_name: 'site-1',
    resources: { 'battery-1': 'battery.b1' },
  },
  invalidConfig: { vtn_url: 'ftp://x', version: '2.0b', resources: { a: 'nokind.x' } },
})

describe('version codecs render what their document accepts', () => {
  const stored = {
    kind: 'event' as const,
    id: 'e1',
    createdDateTime: '2026-01-01T00:00:00.000Z',
    modificationDateTime: '2026-01-01T00:00:00.000Z',
    body: {
      programID: 'p1',
      duration: 'P1D',
      targets: ['group-1', 'AREA:x'],
      payloadDescriptors: [{ objectType: 'EVENT_PAYLOAD_DESCRIPTOR', payloadType: 'PRICE', units: 'KWH' }],
      reportDescriptors: [{ payloadType: 'USAGE', reportIntervals: 'INTERVALS', targets: ['group-1'] }],
      intervalPeriod: { start: '2026-01-01T00:00:00.000Z', duration: 'PT1H' },
      intervals: [
        { id: 0, payloads: [{ type: 'PRICE', values: [0.1] }] },
        { id: 1, intervalPeriod: { duration: 'PT2H' }, payloads: [{ type: 'PRICE', values: [0.2] }] },
      ],
    },
  }
  test('a 3.1.0 event with following intervals, in 3.0.1: starts computed, targets as valuesMaps', () => {
    const rendered = v301.encode(stored)!
    expect(contractFor('3.0.1').validateSchema('event', rendered)).toEqual([])
    expect(rendered.intervals).toMatchObject([
      { id: 0 },
      { id: 1, intervalPeriod: { start: '2026-01-01T01:00:00.000Z', duration: 'PT2H' } },
    ])
    expect(rendered.targets).toEqual([
      { type: 'TARGET', values: ['group-1'] },
      { type: 'AREA', values: ['x'] },
    ])
    expect(rendered.duration).toBeUndefined()
    expect(contractFor('3.1.0').validateSchema('event', v310.encode(stored))).toEqual([])
  })
  test('a subscription without programID cannot be shown in 3.0.1', () => {
    expect(
      v301.encode({ ...stored, kind: 'subscription', body: { clientName: 'c', objectOperations: [] } }),
    ).toBeUndefined()
  })
})

test('the VEN transport refuses to send what its document refuses', async () => {
  let sent = 0
  const client = new VtnClient(
    {
      baseUrl: 'http://127.0.0.1:9/openadr3/3.1.0',
      version: '3.1.0',
      clientId: 'c',
      clientSecret: 's',
      timeoutMs: 1000,
    },
    {
      logger: quiet,
      fetch: (async () => {
        sent += 1
        return new Response('{}', { status: 500 })
      }) as unknown as typeof fetch,
    },
  )
  await expect(client.call('createVen', { body: { objectType: 'VEN_VEN_REQUEST' } })).rejects.toMatchObject({
    name: 'OpenAdrContractError',
  })
  await expect(client.call('searchAllEvents', { query: { limit: 500 } })).rejects.toMatchObject({
    name: 'OpenAdrContractError',
  })
  expect(sent).toBe(0)
})

describe('VTN state shared by replicas (one store, two VtnStates)', () => {
  const object = (id: string, n = 0, programName = id): StoredObject => ({
    kind: 'program',
    id,
    createdDateTime: '2026-01-01T00:00:00.000Z',
    modificationDateTime: '2026-01-01T00:00:00.000Z',
    body: { programName, n },
  })
  /** Until the watches have brought what was written (the memory store delivers on microtasks). */
  const settle = () => new Promise((resolve) => setTimeout(resolve, 0))
  const pair = async (store = createMemoryStore()) => {
    const a = new VtnState({ store })
    const b = new VtnState({ store })
    await a.start()
    await b.start()
    return { store, a, b, stop: () => Promise.all([a.stop(), b.stop()]) }
  }
  const named = (name: string) => [
    { key: uniqueKey('program', name), taken: `a program named '${name}' exists` },
  ]

  test("each sees the other's creates, changes and deletes as its watch brings them", async () => {
    const { a, b, stop } = await pair()
    try {
      const id = newId()
      const created = await a.create(object(id))
      await settle()
      expect(b.get('program', id)?.revision).toBe(created.revision)
      await b.changeObject(
        'program',
        id,
        (current) => current && { ...current, body: { ...current.body, n: 5 } },
      )
      await settle()
      expect(a.get('program', id)?.body.n).toBe(5)
      await a.changeObject('program', id, () => 'delete')
      await settle()
      expect(b.get('program', id)).toBeUndefined()
      expect(a.get('program', id)).toBeUndefined()
    } finally {
      await stop()
    }
  })

  test('a replica starting later reads the bucket; nothing older replaces what it knows', async () => {
    const { store, a, stop } = await pair()
    const late = new VtnState({ store })
    try {
      await a.create(object('p1', 1))
      await a.create(object('p2', 2))
      await a.changeObject('program', 'p2', () => 'delete')
      await late.start()
      expect(late.list('program').map((program) => program.id)).toEqual(['p1'])
      // A change made now comes through its watch.
      await a.changeObject(
        'program',
        'p1',
        (current) => current && { ...current, body: { ...current.body, n: 9 } },
      )
      await settle()
      expect(late.get('program', 'p1')?.body.n).toBe(9)
    } finally {
      await late.stop()
      await stop()
    }
  })

  test('changes of one object from both at once are never lost: each counts, or is refused by name', async () => {
    const { store, a, b, stop } = await pair()
    try {
      await a.create(object('counter'))
      let refused = 0
      const add = (state: VtnState) =>
        state
          .changeObject('program', 'counter', (current) =>
            current
              ? { ...current, body: { ...current.body, n: (current.body.n as number) + 1 } }
              : undefined,
          )
          .then(
            () => 1,
            (error: Error) => {
              expect(error.name).toBe('VtnConflictError')
              refused += 1
              return 0
            },
          )
      const counted = await Promise.all(Array.from({ length: 20 }, (_, i) => add(i % 2 === 0 ? a : b)))
      const stored = new VtnState({ store })
      await stored.start()
      expect(stored.get('program', 'counter')?.body.n).toBe(counted.reduce((sum, one) => sum + one, 0))
      expect(refused).toBeLessThan(20)
      await stored.stop()
    } finally {
      await stop()
    }
  })

  test('a name taken by both at once goes to one object; deleting or renaming it frees the name', async () => {
    const { a, b, stop } = await pair()
    try {
      const outcomes = await Promise.allSettled([
        a.create(object(newId(), 0, 'x'), named('x')),
        b.create(object(newId(), 0, 'x'), named('x')),
      ])
      expect(outcomes.filter((outcome) => outcome.status === 'fulfilled')).toHaveLength(1)
      const lost = outcomes.find((outcome) => outcome.status === 'rejected') as PromiseRejectedResult
      expect(lost.reason.name).toBe('VtnNameTakenError')
      await settle()
      // The loser's object is not left behind.
      expect(a.list('program').filter((program) => program.body.programName === 'x')).toHaveLength(1)
      const winner = a.list('program').find((program) => program.body.programName === 'x')!
      await expect(b.create(object(newId(), 0, 'x'), named('x'))).rejects.toMatchObject({
        name: 'VtnNameTakenError',
      })
      // Renamed: the old name is free, the new one taken.
      await a.changeObject(
        'program',
        winner.id,
        (current) => current && { ...current, body: { ...current.body, programName: 'y' } },
        { claims: () => named('y') },
      )
      const second = await b.create(object(newId(), 0, 'x'), named('x'))
      await expect(b.create(object(newId(), 0, 'y'), named('y'))).rejects.toMatchObject({
        name: 'VtnNameTakenError',
      })
      // Deleted: its name is free.
      await b.changeObject('program', second.id, () => 'delete')
      await a.create(object(newId(), 0, 'x'), named('x'))
      expect(fixedId('oe-node-control')).toBe(fixedId('oe-node-control'))
      expect(fixedId('oe-node-control') < newId()).toBe(true)
    } finally {
      await stop()
    }
  })

  test('a name left pending by a maker that died is taken over; one whose object holds it is not', async () => {
    const { store, a, stop } = await pair()
    try {
      const json = (value: unknown) => new TextEncoder().encode(JSON.stringify(value))
      // Taken, never written: free for the next object.
      await store.put(uniqueKey('program', 'orphan'), json({ id: 'gone', pending: true }))
      await a.create(object(newId(), 0, 'orphan'), named('orphan'))
      // Written, not confirmed: still its object's.
      await store.put('program.kept', json(object('kept', 0, 'kept')))
      await store.put(uniqueKey('program', 'kept'), json({ id: 'kept', pending: true }))
      await expect(a.create(object(newId(), 0, 'kept'), named('kept'))).rejects.toMatchObject({
        name: 'VtnNameTakenError',
      })
      // Held by an object deleted before its name was released: free.
      await store.put(uniqueKey('program', 'stale'), json({ id: 'deleted' }))
      await a.create(object(newId(), 0, 'stale'), named('stale'))
    } finally {
      await stop()
    }
  })
})

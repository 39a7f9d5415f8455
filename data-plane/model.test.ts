import { describe, expect, test } from 'vitest'
import { SPEC_NOT_ELECTRICAL, SPEC_UNITS } from '../test/helpers/check.ts'
import { decodeCbor } from './codec.ts'
import { checkTelemetryRecord, MIN_TIME_MS, parseResource, parseTelemetryRecord } from './model.ts'

const NOW = 1_700_000_000_000
const FIVE_MINUTES = 5 * 60 * 1000

const UNITS = SPEC_UNITS
const NOT_ELECTRICAL = SPEC_NOT_ELECTRICAL
const ELECTRICAL = Object.keys(UNITS).filter((quantity) => !NOT_ELECTRICAL.has(quantity))
const KINDS = ['site', 'meter', 'der', 'inverter', 'battery', 'pv', 'station', 'evse', 'load']

const valid = { kind: 'meter', rid: 'm1', q: 'power', v: 1200.5, t: NOW }

/** Run `action`, expect it to throw a ValidationError, and return it. */
function validationError(action: () => unknown): Error & { path: string } {
  let caught: unknown
  try {
    action()
  } catch (error) {
    caught = error
  }
  expect(caught, 'expected a ValidationError to be thrown').toBeInstanceOf(Error)
  expect((caught as Error).name).toBe('ValidationError')
  return caught as Error & { path: string }
}

function rejectsRecord(input: unknown, path: string, now = NOW): void {
  expect(validationError(() => parseTelemetryRecord(input, now)).path).toBe(path)
}

describe('parseTelemetryRecord', () => {
  test('returns the record exactly, without optional fields that were not sent', () => {
    expect(parseTelemetryRecord(valid, NOW)).toStrictEqual(valid)
  })

  test('keeps the unit echo and quality when sent', () => {
    const record = parseTelemetryRecord({ ...valid, u: 'W', ql: 'estimated' }, NOW)
    expect(record).toStrictEqual({ ...valid, u: 'W', ql: 'estimated' })
  })

  test('treats explicitly undefined u and ql as absent', () => {
    const record = parseTelemetryRecord({ ...valid, u: undefined, ql: undefined }, NOW)
    expect(record).toStrictEqual(valid)
    expect(Object.keys(record).sort()).toEqual(['kind', 'q', 'rid', 't', 'v'])
  })

  test.each(KINDS)('accepts kind %s', (kind) => {
    expect(parseTelemetryRecord({ ...valid, kind }, NOW).kind).toBe(kind)
  })

  test.each(Object.entries(UNITS))('accepts base quantity %s with its unit %s', (q, u) => {
    // 50 is plausible for every quantity (soc is 0–100 %).
    expect(parseTelemetryRecord({ ...valid, q, v: 50 }, NOW).q).toBe(q)
    expect(parseTelemetryRecord({ ...valid, q, v: 50, u }, NOW).u).toBe(u)
  })

  const phased = ELECTRICAL.flatMap((q) => ['l1', 'l2', 'l3'].map((phase) => [`${q}_${phase}`, UNITS[q]!]))
  test.each(phased)('accepts phase-suffixed quantity %s with unit %s', (q, u) => {
    // 50 is plausible for every quantity (soc is 0–100 %).
    expect(parseTelemetryRecord({ ...valid, q, v: 50 }, NOW).q).toBe(q)
    expect(parseTelemetryRecord({ ...valid, q, v: 50, u }, NOW).u).toBe(u)
  })

  test.each([
    'soc_l1',
    'soc_l2',
    'soc_l3',
    'temperature_l1',
    'temperature_l2',
    'temperature_l3',
    'power_l0',
    'power_l4',
    'power_L1',
    'power_l1_l2',
    '_l1',
    'watts',
    'Power',
    'power ',
    '',
  ])('rejects quantity %j with path q', (q) => {
    rejectsRecord({ ...valid, q }, 'q')
  })

  test.each([null, 42, ['power']])('rejects non-string quantity %j with path q', (q) => {
    rejectsRecord({ ...valid, q }, 'q')
  })

  // Regression (fixed): canonicalUnit() looks quantities up on a plain object literal, so names inherited from
  // Object.prototype resolve to functions and are accepted as quantities (and published on
  // oe.tel.<kind>.<rid>.constructor etc.).
  test.each(['constructor', 'toString', 'hasOwnProperty', 'valueOf', '__proto__'])(
    'rejects Object.prototype member %s as a quantity',
    (q) => {
      rejectsRecord({ ...valid, q }, 'q')
    },
  )

  test.each([
    '',
    'a.b',
    'a b',
    'm1.',
    '-m1',
    '_m1',
    ':m1',
    'm1\n',
    'm/1',
    'm*1',
    'm>1',
    'é1',
    'x'.repeat(129),
  ])('rejects resource id %j with path rid', (rid) => {
    rejectsRecord({ ...valid, rid }, 'rid')
  })

  test.each([undefined, null, 7, ['m1']])('rejects non-string resource id %j with path rid', (rid) => {
    rejectsRecord({ ...valid, rid }, 'rid')
  })

  test.each(['x'.repeat(128), 'A', '9', 'station_1:evse-2', 'Station-12-3'])(
    'accepts resource id %s',
    (rid) => {
      expect(parseTelemetryRecord({ ...valid, rid }, NOW).rid).toBe(rid)
    },
  )

  test.each(['meters', 'Meter', 'charger', '', 'toString', undefined, null, 3])(
    'rejects kind %j with path kind',
    (kind) => {
      rejectsRecord({ ...valid, kind }, 'kind')
    },
  )

  test.each([
    Number.NaN,
    Number.POSITIVE_INFINITY,
    Number.NEGATIVE_INFINITY,
    '1',
    '',
    null,
    undefined,
    true,
    [1],
    { value: 1 },
    10n,
  ])('rejects value %s with path v', (v) => {
    rejectsRecord({ ...valid, v }, 'v')
  })

  test.each([0, -0, -4200, 0.001, Number.MAX_VALUE, -Number.MAX_VALUE])('accepts finite value %d', (v) => {
    expect(parseTelemetryRecord({ ...valid, v }, NOW).v).toBe(v)
  })

  test('accepts a time up to exactly five minutes ahead of the clock', () => {
    expect(parseTelemetryRecord({ ...valid, t: NOW + FIVE_MINUTES }, NOW).t).toBe(NOW + FIVE_MINUTES)
  })

  test('rejects a time more than five minutes ahead of the clock with path t', () => {
    rejectsRecord({ ...valid, t: NOW + FIVE_MINUTES + 1 }, 't')
    rejectsRecord({ ...valid, t: NOW + 24 * 3600 * 1000 }, 't')
  })

  test('judges the future against the clock it is given', () => {
    const t = NOW + 10 * FIVE_MINUTES
    rejectsRecord({ ...valid, t }, 't', NOW)
    expect(parseTelemetryRecord({ ...valid, t }, t).t).toBe(t)
  })

  test('accepts old readings, down to 2000-01-01T00:00:00Z', () => {
    expect(parseTelemetryRecord({ ...valid, t: MIN_TIME_MS }, NOW).t).toBe(Date.UTC(2000, 0, 1))
    expect(parseTelemetryRecord({ ...valid, t: NOW - 10 * 365 * 24 * 3600 * 1000 }, NOW).t).toBeLessThan(NOW)
  })

  test.each([0, 1, MIN_TIME_MS - 1, 1_700_000_000])(
    'rejects time %d, before 2000 (a zero, or seconds sent as milliseconds), with path t',
    (t) => {
      const error = validationError(() => parseTelemetryRecord({ ...valid, t }, NOW))
      expect(error.path).toBe('t')
      expect(error.message).toMatch(/before 2000-01-01/)
    },
  )

  test.each([
    NOW + 0.5,
    1.5,
    -1,
    -NOW,
    Number.NaN,
    Number.POSITIVE_INFINITY,
    2 ** 53,
    '2024-01-01T00:00:00Z',
    `${NOW}`,
    null,
    undefined,
    BigInt(NOW),
  ])('rejects time %s with path t', (t) => {
    rejectsRecord({ ...valid, t }, 't', Number.MAX_SAFE_INTEGER)
  })

  test.each([
    ['power', 'kW'],
    ['power', 'w'],
    ['power', 'Wh'],
    ['power', ''],
    ['energy_import', 'kWh'],
    ['voltage_l2', 'A'],
    ['temperature', 'C'],
    ['power_factor', 1],
    ['power', null],
  ])('rejects unit echo for %s of %j with path u', (q, u) => {
    rejectsRecord({ ...valid, q, u }, 'u')
  })

  test.each(['good', 'estimated', 'suspect', 'missing'])('accepts quality %s', (ql) => {
    expect(parseTelemetryRecord({ ...valid, ql }, NOW).ql).toBe(ql)
  })

  test.each(['bad', 'GOOD', '', 'ok', 1, null, true])('rejects quality %j with path ql', (ql) => {
    rejectsRecord({ ...valid, ql }, 'ql')
  })

  test.each(['extra', 'value', 'unit', 'quality', 'site', 'Kind'])(
    'rejects unknown field %s with its name as path',
    (field) => {
      rejectsRecord({ ...valid, [field]: 1 }, field)
    },
  )

  test('rejects an unknown field even when its value is undefined', () => {
    rejectsRecord({ ...valid, extra: undefined }, 'extra')
  })

  test.each([null, undefined, [], [valid], 'record', 42, true])(
    'rejects non-object input %j with empty path',
    (input) => {
      rejectsRecord(input, '')
    },
  )

  test.each([
    ['energy_import', -1],
    ['energy_export', -0.001],
    ['energy_import_l2', -5],
    ['soc', -0.1],
    ['soc', 100.01],
    ['soc', 250],
  ])('rejects an implausible %s of %d with path v and the range in the reason', (q, v) => {
    const error = validationError(() => parseTelemetryRecord({ ...valid, q, v }, NOW))
    expect(error.path).toBe('v')
    expect(error.message).toMatch(q === 'soc' ? /between 0 and 100/ : /cannot be negative/)
  })

  test.each([
    ['energy_import', 0],
    ['energy_export', 1e12],
    ['energy_import_l3', 0],
    ['soc', 0],
    ['soc', 100],
    ['soc', 55.5],
    ['power', -1e9],
    ['temperature', -40],
  ])('accepts a plausible %s of %d', (q, v) => {
    expect(parseTelemetryRecord({ ...valid, q, v }, NOW).v).toBe(v)
  })

  test('checkTelemetryRecord answers the same as parseTelemetryRecord without throwing', () => {
    expect(checkTelemetryRecord(valid, NOW)).toEqual({ ok: true, record: valid })
    expect(checkTelemetryRecord({ ...valid, q: 'soc', v: 101 }, NOW)).toEqual({
      ok: false,
      path: 'v',
      reason: 'soc must be between 0 and 100 %, got 101',
    })
    expect(checkTelemetryRecord({}, NOW)).toEqual({
      ok: false,
      path: 'kind',
      reason: 'must be a string, got undefined',
    })
  })

  test('names the field in the error message', () => {
    const error = validationError(() => parseTelemetryRecord({ ...valid, rid: 'a.b' }, NOW))
    expect(error.message).toMatch(/^rid: /)
    expect(error.message).toContain('a.b')
  })

  test('does not echo an enormous bad value back in full', () => {
    const error = validationError(() => parseTelemetryRecord({ ...valid, q: 'x'.repeat(10_000) }, NOW))
    expect(error.path).toBe('q')
    expect(error.message.length).toBeLessThan(500)
  })
})

function rejectsResource(kind: unknown, rid: unknown, input: unknown, path: string): void {
  expect(validationError(() => parseResource(kind, rid, input, NOW)).path).toBe(path)
}

describe('parseResource', () => {
  test('accepts good standing data and stamps it with the given time', () => {
    const input = {
      site: 'site-1',
      name: 'Main meter',
      attrs: { phases: 3, vendor: 'ACME', nested: { ratings: [16, 32], enabled: true, note: null } },
    }
    expect(parseResource('meter', 'm1', input, NOW)).toStrictEqual({
      kind: 'meter',
      rid: 'm1',
      site: 'site-1',
      name: 'Main meter',
      attrs: input.attrs,
      updated: NOW,
    })
  })

  test('stamps updated with the current time by default', () => {
    const before = Date.now()
    const resource = parseResource('battery', 'b1', {})
    const after = Date.now()
    expect(resource.updated).toBeGreaterThanOrEqual(before)
    expect(resource.updated).toBeLessThanOrEqual(after)
  })

  test('gives an empty body empty attrs and no site or name', () => {
    expect(parseResource('pv', 'pv1', {}, NOW)).toStrictEqual({
      kind: 'pv',
      rid: 'pv1',
      attrs: {},
      updated: NOW,
    })
  })

  test('accepts kind and rid in the body when they match the path', () => {
    expect(parseResource('evse', 'st1-2', { kind: 'evse', rid: 'st1-2' }, NOW)).toStrictEqual({
      kind: 'evse',
      rid: 'st1-2',
      attrs: {},
      updated: NOW,
    })
  })

  test('rejects a body kind that does not match the path', () => {
    rejectsResource('meter', 'm1', { kind: 'battery' }, 'kind')
  })

  test('rejects a body rid that does not match the path', () => {
    rejectsResource('meter', 'm1', { rid: 'm2' }, 'rid')
  })

  test.each(['meters', '', undefined, 5])('rejects path kind %j', (kind) => {
    rejectsResource(kind, 'm1', {}, 'kind')
  })

  test.each(['a.b', '', 'a b', 'x'.repeat(129), undefined, 5])('rejects path rid %j', (rid) => {
    rejectsResource('meter', rid, {}, 'rid')
  })

  test.each(['a.b', '', 'site one', 42, null, { id: 's1' }])('rejects site %j with path site', (site) => {
    rejectsResource('meter', 'm1', { site }, 'site')
  })

  test('accepts a name of 256 characters and rejects 257 or a non-string', () => {
    expect(parseResource('meter', 'm1', { name: 'n'.repeat(256) }, NOW).name).toHaveLength(256)
    rejectsResource('meter', 'm1', { name: 'n'.repeat(257) }, 'name')
    rejectsResource('meter', 'm1', { name: 42 }, 'name')
  })

  test.each([[[]], [null], ['attrs'], [42], [true]])('rejects attrs %j that are not an object', (attrs) => {
    rejectsResource('meter', 'm1', { attrs }, 'attrs')
  })

  test.each([
    [{ x: Number.NaN }, 'attrs.x'],
    [{ x: Number.POSITIVE_INFINITY }, 'attrs.x'],
    [{ a: { b: Number.NEGATIVE_INFINITY } }, 'attrs.a.b'],
    [{ a: { b: [1, 2, Number.NaN] } }, 'attrs.a.b.2'],
    [{ list: [{ deep: { deeper: Number.NaN } }] }, 'attrs.list.0.deep.deeper'],
  ])('rejects non-finite attribute %j with path %s', (attrs, path) => {
    rejectsResource('meter', 'm1', { attrs }, path)
  })

  test('rejects attrs larger than 64 KiB', () => {
    rejectsResource('meter', 'm1', { attrs: { blob: 'x'.repeat(70_000) } }, 'attrs')
  })

  test.each(['owner', 'updated', 'attributes'])('rejects unknown field %s', (field) => {
    rejectsResource('meter', 'm1', { [field]: 'x' }, field)
  })

  test.each([null, undefined, [], 'meter', 1])('rejects non-object body %j with empty path', (input) => {
    rejectsResource('meter', 'm1', input, '')
  })

  // Regression (fixed): a CBOR body (PUT /resources with application/cbor) decodes integers beyond 2^53 to
  // bigint; parseResource then calls JSON.stringify on attrs and throws a TypeError instead of a
  // ValidationError, so the HTTP API answers 500 instead of 400.
  test('rejects a bigint attribute decoded from CBOR with a ValidationError', () => {
    // {attrs: {big: 18446744073709551615}}
    const bytes = new Uint8Array([
      0xa1, 0x65, 0x61, 0x74, 0x74, 0x72, 0x73, 0xa1, 0x63, 0x62, 0x69, 0x67, 0x1b, 0xff, 0xff, 0xff, 0xff,
      0xff, 0xff, 0xff, 0xff,
    ])
    const error = validationError(() => parseResource('meter', 'm1', decodeCbor(bytes), NOW))
    expect(error.path.startsWith('attrs')).toBe(true)
  })

  // Regression (fixed): CBOR shared-reference tags (28/29) decode to a cyclic object; checkAttrValues recurses
  // without bound and throws RangeError (stack overflow) instead of a ValidationError.
  test('rejects cyclic attrs decoded from CBOR with a ValidationError', () => {
    // {attrs: 28({self: 29(0)})}
    const bytes = new Uint8Array([
      0xa1, 0x65, 0x61, 0x74, 0x74, 0x72, 0x73, 0xd8, 0x1c, 0xa1, 0x64, 0x73, 0x65, 0x6c, 0x66, 0xd8, 0x1d,
      0x00,
    ])
    const error = validationError(() => parseResource('meter', 'm1', decodeCbor(bytes), NOW))
    expect(error.path.startsWith('attrs')).toBe(true)
  })
})

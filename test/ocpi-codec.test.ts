/**
 * The OCPI 2.2.1 codec against the specification's own example objects (every file of
 * testdata/ocpi/2.2.1/examples): each parses leniently (what we accept), and passes the strict
 * schema (what we send) and serialises back to the same JSON, but for the two examples that
 * leave out fields the specification requires (named here). Plus the transport's token header
 * forms and the normaliser's unit conversions.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import * as z from 'zod'
import {
  connectorPowerW,
  costOf,
  limitFromProfile,
  numberEvses,
  ocppStatusToOcpi,
  profileFromLimit,
  sessionTelemetry,
  stationRidFor,
} from '../plugins/ocpi/normalise.ts'
import { tokenCandidates } from '../plugins/ocpi/server.ts'
import { formatDateTime, ocpi221, parseDateTime } from '../plugins/ocpi/v221.ts'
import { TESTDATA } from './helpers/testdata.ts'

const EXAMPLES = join(TESTDATA, 'ocpi', '2.2.1', 'examples')

type Mode = 'strict' | 'lenient'

/** The schema an example file is an instance of (fragments of an object get a wrapper). */
function schemaFor(mode: Mode, name: string): z.ZodType {
  const s = ocpi221[mode]
  const object = (shape: z.ZodRawShape) => (mode === 'strict' ? z.strictObject(shape) : z.object(shape))
  const envelope = (data: z.ZodType) =>
    object({
      data,
      status_code: z.number().int(),
      status_message: z.string().optional(),
      timestamp: z.string(),
    })
  const rules: [RegExp, z.ZodType][] = [
    [/^cdr_/, s.cdr],
    [/^credentials_/, s.credentials],
    [/^location_energymix_/, object({ energy_mix: s.energyMix })],
    [/^location_example/, s.location],
    [/^location_hours_/, s.hours],
    [/^location_patch_example_location/, s.locationPatch],
    [/^location_patch_example_tariff/, s.connectorPatch],
    [/^location_patch_example_/, s.evsePatch],
    [/^location_put_example_add_evse/, s.evse],
    [/^location_regularhours_/, object({ opening_times: s.hours })],
    [/^session_patch_/, s.sessionPatch],
    [/^session_example_/, s.session],
    [/^tariff/, s.tariff],
    [/^token_patch_/, s.tokenPatch],
    [/^token_/, s.token],
    [/^transport_and_format_get_token_example/, envelope(s.token)],
    [/^transport_and_format_get_token_list_example/, envelope(z.array(s.token))],
    [/^transport_and_format_version_details_example/, envelope(s.versionDetails)],
    [/^transport_and_format_version_info_example/, envelope(s.versions)],
    [/^type_displaytext_/, s.displayText],
    [/^version_details_/, s.versionDetails],
    [/^versions_info_/, s.versions],
  ]
  const found = rules.find(([pattern]) => pattern.test(name))
  if (!found) throw new Error(`no schema for example ${name}`)
  return found[1]
}

/** Examples that leave out fields the specification requires: the lenient side takes them. */
const INCOMPLETE: Record<string, string[]> = {
  // "add an EVSE": the connector has no power_type, max_voltage, max_amperage, last_updated.
  'location_put_example_add_evse.json': [
    'connectors.0.power_type',
    'connectors.0.max_voltage',
    'connectors.0.max_amperage',
    'connectors.0.last_updated',
  ],
  // A tariff PUT without last_updated.
  'tariff_put_example.json': ['last_updated'],
}

const files = readdirSync(EXAMPLES)
  .filter((name) => name.endsWith('.json'))
  .sort()

describe('the specification examples', () => {
  test('there are 59 of them', () => {
    expect(files).toHaveLength(59)
  })

  test.each(files)('%s parses, and round-trips through the strict schema', (name) => {
    const raw = JSON.parse(readFileSync(join(EXAMPLES, name), 'utf8'))
    const lenient = schemaFor('lenient', name).safeParse(raw)
    expect(lenient.success, lenient.success ? '' : JSON.stringify(lenient.error.issues)).toBe(true)
    const strict = schemaFor('strict', name).safeParse(lenient.data)
    const missing = INCOMPLETE[name]
    if (missing) {
      expect(strict.success).toBe(false)
      expect(strict.error!.issues.map((issue) => issue.path.join('.'))).toEqual(missing)
      // What the lenient side made of it is stable: parsing it again gives the same.
      const again = schemaFor('lenient', name).parse(JSON.parse(JSON.stringify(lenient.data)))
      expect(again).toEqual(lenient.data)
      return
    }
    expect(strict.success, strict.success ? '' : JSON.stringify(strict.error.issues)).toBe(true)
    expect(JSON.parse(JSON.stringify(strict.data))).toEqual(raw)
  })

  test('lenient in: unknown fields dropped, numbers as text, any DateTime form; strict out refuses them', () => {
    const raw = JSON.parse(readFileSync(join(EXAMPLES, 'location_example.json'), 'utf8'))
    raw.vendor_extension = { anything: true }
    raw.evses[0].physical_reference = 7
    raw.last_updated = '2015-06-29T22:39:09+02:00'
    const parsed = ocpi221.lenient.location.parse(raw)
    expect(parsed).not.toHaveProperty('vendor_extension')
    expect(parsed.evses![0]!.physical_reference).toBe('7')
    expect(parsed.last_updated).toBe('2015-06-29T20:39:09Z')
    expect(ocpi221.strict.location.safeParse(raw).success).toBe(false)
    expect(ocpi221.strict.location.safeParse(parsed).success).toBe(true)
  })

  test('DateTimes: the forms OCPI allows are read as UTC; ours are written with Z', () => {
    expect(parseDateTime('2015-06-29T20:39:09')).toBe(Date.UTC(2015, 5, 29, 20, 39, 9))
    expect(parseDateTime('2016-12-29T17:45:09.2Z')).toBe(Date.UTC(2016, 11, 29, 17, 45, 9, 200))
    expect(parseDateTime('yesterday')).toBeUndefined()
    expect(formatDateTime(Date.UTC(2015, 5, 29, 20, 39, 9))).toBe('2015-06-29T20:39:09Z')
  })
})

describe('transport helpers', () => {
  test('Authorization: Token in Base64 and raw', () => {
    expect(tokenCandidates(`Token ${Buffer.from('example-token').toString('base64')}`)).toEqual([
      'example-token',
      Buffer.from('example-token').toString('base64'),
    ])
    expect(tokenCandidates('Token ebf3b399-779f-4497-9b9d-ac6ad3cc44d2')).toEqual([
      'ebf3b399-779f-4497-9b9d-ac6ad3cc44d2',
    ])
    expect(tokenCandidates('Bearer abc')).toBeUndefined()
    expect(tokenCandidates(null)).toBeUndefined()
  })
})

describe('normaliser', () => {
  test('rids of partners’ locations and EVSE numbers', () => {
    expect(stationRidFor('nl', 'tnm', 'LOC1')).toBe('NL_TNM_LOC1')
    expect(stationRidFor('NL', 'TNM', 'a/b c')).toMatch(/^NL_TNM_h[0-9a-f]{24}$/)
    expect(numberEvses([{ uid: 'b' }, { uid: 'a' }], { a: 1 })).toEqual({ a: 1, b: 2 })
  })

  test('OCPP statuses as OCPI EVSE statuses', () => {
    expect(
      ['Available', 'Charging', 'Occupied', 'Reserved', 'Unavailable', 'Faulted', 'Weird'].map(
        ocppStatusToOcpi,
      ),
    ).toEqual(['AVAILABLE', 'CHARGING', 'CHARGING', 'RESERVED', 'INOPERATIVE', 'OUTOFORDER', 'UNKNOWN'])
  })

  test('session kWh → energy_import Wh, POWER periods → power W', () => {
    const records = sessionTelemetry(
      {
        kwh: 12.5,
        last_updated: '2026-01-01T10:00:00Z',
        charging_periods: [
          {
            start_date_time: '2026-01-01T09:00:00Z',
            dimensions: [
              { type: 'POWER', volume: 11 },
              { type: 'ENERGY', volume: 5 },
            ],
          },
        ],
      },
      { rid: 'X-1' },
      Date.UTC(2026, 0, 2),
    )
    expect(records).toEqual([
      { kind: 'evse', rid: 'X-1', q: 'energy_import', v: 12_500, t: Date.UTC(2026, 0, 1, 10) },
      { kind: 'evse', rid: 'X-1', q: 'power', v: 11_000, t: Date.UTC(2026, 0, 1, 9) },
    ])
  })

  test('charging profiles ↔ limit_power', () => {
    const now = Date.UTC(2026, 0, 1, 12)
    const connector = { power_type: 'AC_3_PHASE', max_voltage: 230 }
    expect(
      limitFromProfile(
        {
          start_date_time: '2026-01-01T11:00:00Z',
          duration: 7200,
          charging_rate_unit: 'A',
          charging_profile_period: [
            { start_period: 0, limit: 32 },
            { start_period: 3000, limit: 16 },
          ],
        },
        now,
        connector,
      ),
    ).toEqual({ watts: 16 * 230 * 3, until: Date.UTC(2026, 0, 1, 13) })
    expect(profileFromLimit(7400, now + 600_000, now)).toEqual({
      start_date_time: '2026-01-01T12:00:00Z',
      duration: 600,
      charging_rate_unit: 'W',
      charging_profile_period: [{ start_period: 0, limit: 7400 }],
    })
    expect(connectorPowerW({ power_type: 'AC_3_PHASE', max_voltage: 230, max_amperage: 16 })).toBe(11_040)
  })

  test('cost under a tariff: flat, energy by step, time by step', () => {
    const tariff = ocpi221.strict.tariff.parse(
      JSON.parse(readFileSync(join(EXAMPLES, 'tariff_17_reservation_with_expire_fee.json'), 'utf8')),
    )
    // FLAT 4.00 (20% VAT), TIME 2.00/h per 600 s (20%), ENERGY not first-priced elsewhere: 0.25/kWh (10%).
    const cost = costOf(tariff, 10, 0.5)
    expect(cost.fixed).toBe(4)
    expect(cost.time).toBe(1)
    expect(cost.energy).toBe(2.5)
    expect(cost.excl_vat).toBe(7.5)
    expect(cost.incl_vat).toBe(4.8 + 1.2 + 2.75)
  })
})

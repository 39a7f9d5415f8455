import { describe, expect, test } from 'vitest'
import {
  energyRegisterWh,
  type NormaliseTarget,
  normaliseMeterValues,
  normaliseSample,
  sampleNumber,
} from './normalise.ts'
import { meterValues201 } from './v201.ts'

const evse: NormaliseTarget = { kind: 'evse', rid: 'CS1-1', stationLevel: false }
const station: NormaliseTarget = { kind: 'station', rid: 'CS1', stationLevel: true }
const T = '2025-01-02T03:04:05.000Z'
const t = Date.parse(T)

const values = (target = evse, ...sampledValue: Record<string, unknown>[]) =>
  normaliseMeterValues(target, [{ timestamp: T, sampledValue: sampledValue as never }])

describe('units', () => {
  test.each([
    ['Power.Active.Import', '7.4', 'kW', 'power', 7400],
    ['Power.Active.Import', '7400', 'W', 'power', 7400],
    ['Energy.Active.Import.Register', '12.345', 'kWh', 'energy_import', 12_345],
    ['Energy.Active.Import.Register', '12345', 'Wh', 'energy_import', 12_345],
    ['Energy.Active.Export.Register', '0.5', 'kWh', 'energy_export', 500],
    ['Current.Import', '16.2', 'A', 'current', 16.2],
    ['Voltage', '230.1', 'V', 'voltage', 230.1],
    ['SoC', '55', 'Percent', 'soc', 55],
    ['Temperature', '21.5', 'Celsius', 'temperature', 21.5],
    ['Temperature', '21.5', 'Celcius', 'temperature', 21.5],
    ['Temperature', '50', 'Fahrenheit', 'temperature', 10],
    ['Temperature', '300', 'K', 'temperature', 26.85],
    ['Power.Offered', '11', 'kW', 'power_offered', 11_000],
    ['Power.Reactive.Import', '1.2', 'kvar', 'reactive_power', 1200],
    ['Frequency', '50.01', undefined, 'frequency', 50.01],
    ['Power.Factor', '0.97', undefined, 'power_factor', 0.97],
  ])('%s %s %s → %s %d', (measurand, value, unit, quantity, expected) => {
    expect(values(evse, { measurand, value, unit }).records).toEqual([
      { kind: 'evse', rid: 'CS1-1', q: quantity, v: expected, t },
    ])
  })

  test('a missing unit is the measurand’s natural unit; a missing measurand is the energy import register', () => {
    const { records } = values(
      evse,
      { value: '1234' },
      { measurand: 'Power.Active.Import', value: '3000' },
      { measurand: 'Voltage', value: '229' },
    )
    expect(records.map((r) => [r.q, r.v])).toEqual([
      ['power', 3000],
      ['energy_import', 1234],
      ['voltage', 229],
    ])
  })

  test('2.0.1 unitOfMeasure with a multiplier', () => {
    const [meterValue] = meterValues201([
      {
        timestamp: T,
        sampledValue: [
          { value: 7.4, measurand: 'Power.Active.Import', unitOfMeasure: { unit: 'W', multiplier: 3 } },
          { value: 12.5, unitOfMeasure: { unit: 'kWh' } },
          { value: 123, measurand: 'Energy.Active.Import.Register', unitOfMeasure: { multiplier: 2 } },
        ],
      },
    ])
    const { records } = normaliseMeterValues(evse, [meterValue!])
    expect(records.map((r) => [r.q, r.v])).toEqual([
      ['power', 7400],
      ['energy_import', 12_300],
    ])
    // The last energy register of the instant wins; the first one is overwritten.
    expect(records).toHaveLength(2)
  })

  test('a unit that does not fit the measurand skips the sample, with a reason', () => {
    const result = values(evse, { measurand: 'Power.Active.Import', value: '5', unit: 'Wh' })
    expect(result.records).toEqual([])
    expect(result.skipped).toEqual([
      { measurand: 'Power.Active.Import', reason: 'unit Wh does not fit Power.Active.Import' },
    ])
  })

  test('values that are not numbers, signed data and measurands without a quantity are skipped', () => {
    const result = values(
      evse,
      { value: 'abc' },
      { value: '' },
      { value: '12', format: 'SignedData' },
      { measurand: 'Energy.Active.Import.Interval', value: '12' },
      { measurand: 'RPM', value: '12' },
      { measurand: 'Current.Offered', value: '12', unit: 'A' },
    )
    expect(result.records).toEqual([])
    expect(result.skipped).toHaveLength(6)
  })

  test('decimal text parsing', () => {
    expect(sampleNumber('1e3')).toBe(1000)
    expect(sampleNumber(' 12.50 ')).toBe(12.5)
    expect(sampleNumber('-3')).toBe(-3)
    expect(sampleNumber('0x10')).toBeUndefined()
    expect(sampleNumber('Infinity')).toBeUndefined()
    expect(sampleNumber(Number.NaN)).toBeUndefined()
  })
})

describe('out of range and implausible samples', () => {
  test('a value that overflows on conversion (1e308 kWh) is skipped; the other samples of the meter value are kept', () => {
    const result = values(
      evse,
      { measurand: 'Energy.Active.Import.Register', value: '1e308', unit: 'kWh' },
      { measurand: 'Power.Active.Import', value: '7.4', unit: 'kW' },
      { measurand: 'Voltage', value: '230' },
    )
    expect(result.records.map((r) => [r.q, r.v])).toEqual([
      ['power', 7400],
      ['voltage', 230],
    ])
    expect(result.skipped).toEqual([
      { measurand: 'Energy.Active.Import.Register', reason: 'value is out of range after conversion to Wh' },
    ])
  })

  test('2.0.1 multipliers that overflow, and netting that would, are skipped too', () => {
    const [meterValue] = meterValues201([
      {
        timestamp: T,
        sampledValue: [
          { value: 1e300, measurand: 'Power.Active.Import', unitOfMeasure: { unit: 'W', multiplier: 9 } },
          { value: 5, measurand: 'Current.Import' },
        ],
      },
    ])
    const result = normaliseMeterValues(evse, [meterValue!])
    expect(result.records.map((r) => [r.q, r.v])).toEqual([['current', 5]])
    expect(result.skipped).toHaveLength(1)
    const netted = values(
      evse,
      { measurand: 'Power.Active.Import', value: '1.7e308', unit: 'W' },
      { measurand: 'Power.Active.Export', value: '-1.7e308', unit: 'W' },
    )
    expect(netted.records).toEqual([])
    expect(netted.skipped).toEqual([
      { measurand: 'Power.Active.Import', reason: 'v: must be finite, got Infinity' },
    ])
  })

  test('negative energy registers and a state of charge outside 0–100 % are skipped with the reason', () => {
    const result = values(
      evse,
      { measurand: 'Energy.Active.Import.Register', value: '-1', unit: 'kWh' },
      { measurand: 'Energy.Active.Export.Register', value: '-5', phase: 'L1' },
      { measurand: 'SoC', value: '101' },
      { measurand: 'SoC', value: '-2', location: 'EV' },
      { measurand: 'Temperature', value: '-20' },
      { measurand: 'Power.Active.Import', value: '-3000' },
    )
    expect(result.records.map((r) => [r.q, r.v])).toEqual([
      ['power', -3000],
      ['temperature', -20],
    ])
    expect(result.skipped).toEqual([
      {
        measurand: 'Energy.Active.Import.Register',
        reason: 'energy_import is a cumulative register and cannot be negative, got -1000',
      },
      {
        measurand: 'Energy.Active.Export.Register',
        reason: 'energy_export_l1 is a cumulative register and cannot be negative, got -5',
      },
      { measurand: 'SoC', reason: 'soc must be between 0 and 100 %, got 101' },
      { measurand: 'SoC', reason: 'soc must be between 0 and 100 %, got -2' },
    ])
  })

  test('a timestamp before 2000 skips its meter value; later meter values are kept', () => {
    const result = normaliseMeterValues(evse, [
      {
        timestamp: '1970-01-01T00:00:00Z',
        sampledValue: [{ value: '1' }, { measurand: 'SoC', value: '50' }],
      },
      { timestamp: '1999-12-31T23:59:59.999Z', sampledValue: [{ value: '2' }] },
      { timestamp: T, sampledValue: [{ value: '3' }] },
    ])
    expect(result.records).toEqual([{ kind: 'evse', rid: 'CS1-1', q: 'energy_import', v: 3, t }])
    expect(result.skipped.map((s) => s.reason)).toEqual([
      'timestamp is before 2000-01-01',
      'timestamp is before 2000-01-01',
      'timestamp is before 2000-01-01',
    ])
  })

  test('the session energy register ignores implausible and overflowing registers', () => {
    const register = (value: string, unit = 'Wh') => ({ timestamp: T, sampledValue: [{ value, unit }] })
    expect(energyRegisterWh([register('5', 'kWh'), register('-1')])).toBe(5000)
    expect(energyRegisterWh([register('1e308', 'kWh')])).toBeUndefined()
  })
})

describe('phases', () => {
  test('L1/L2/L3 and L1-N… become _l1/_l2/_l3; N and line-to-line are skipped', () => {
    const result = values(
      evse,
      { measurand: 'Current.Import', value: '16', unit: 'A', phase: 'L1' },
      { measurand: 'Current.Import', value: '15', unit: 'A', phase: 'L2' },
      { measurand: 'Current.Import', value: '14', unit: 'A', phase: 'L3' },
      { measurand: 'Current.Import', value: '1', unit: 'A', phase: 'N' },
      { measurand: 'Voltage', value: '231', unit: 'V', phase: 'L1-N' },
      { measurand: 'Voltage', value: '232', unit: 'V', phase: 'L2-N' },
      { measurand: 'Voltage', value: '233', unit: 'V', phase: 'L3-N' },
      { measurand: 'Voltage', value: '400', unit: 'V', phase: 'L1-L2' },
      { measurand: 'Power.Active.Import', value: '2.3', unit: 'kW', phase: 'L1' },
    )
    expect(Object.fromEntries(result.records.map((r) => [r.q, r.v]))).toEqual({
      current_l1: 16,
      current_l2: 15,
      current_l3: 14,
      voltage_l1: 231,
      voltage_l2: 232,
      voltage_l3: 233,
      power_l1: 2300,
    })
    expect(result.skipped.map((s) => s.reason)).toEqual([
      'phase N has no canonical quantity',
      'phase L1-L2 has no canonical quantity',
    ])
  })

  test('soc and temperature are never phased', () => {
    const { records } = values(evse, {
      measurand: 'SoC',
      value: '40',
      unit: 'Percent',
      phase: 'L1',
      location: 'EV',
    })
    expect(records).toEqual([{ kind: 'evse', rid: 'CS1-1', q: 'soc', v: 40, t }])
  })
})

describe('signs', () => {
  test('export power is negative (§5: power < 0 when the resource feeds the grid)', () => {
    const { records } = values(evse, { measurand: 'Power.Active.Export', value: '3.5', unit: 'kW' })
    expect(records).toEqual([{ kind: 'evse', rid: 'CS1-1', q: 'power', v: -3500, t }])
  })

  test('import and export of one quantity in one meter value are netted into one reading', () => {
    const { records } = values(
      evse,
      { measurand: 'Power.Active.Import', value: '7', unit: 'kW' },
      { measurand: 'Power.Active.Export', value: '0', unit: 'kW' },
      { measurand: 'Current.Import', value: '0', unit: 'A', phase: 'L1' },
      { measurand: 'Current.Export', value: '10', unit: 'A', phase: 'L1' },
    )
    expect(records.map((r) => [r.q, r.v])).toEqual([
      ['power', 7000],
      ['current_l1', -10],
    ])
  })

  test('a zero export is 0, not -0', () => {
    const { records } = values(evse, { measurand: 'Power.Active.Export', value: '0', unit: 'W' })
    expect(Object.is(records[0]!.v, 0)).toBe(true)
  })
})

describe('location and time', () => {
  test('outlet (or none) counts for an EVSE; inlet only for the station; EV only for SoC; body only for temperature', () => {
    const sample = (location: string, measurand = 'Power.Active.Import') => ({
      measurand,
      value: '1',
      unit: 'W',
      location,
    })
    expect(values(evse, sample('Outlet')).records).toHaveLength(1)
    expect(values(evse, sample('Inlet')).records).toHaveLength(0)
    expect(values(station, sample('Inlet')).records).toHaveLength(1)
    expect(values(evse, sample('EV')).records).toHaveLength(0)
    expect(values(evse, sample('Cable')).records).toHaveLength(0)
    expect(values(evse, { measurand: 'SoC', value: '80', location: 'EV' }).records).toHaveLength(1)
    expect(values(evse, { measurand: 'Temperature', value: '30', location: 'Body' }).records).toHaveLength(1)
  })

  test('timestamps become epoch ms; unparseable or far-future ones skip the meter value', () => {
    const now = Date.now()
    const result = normaliseMeterValues(
      evse,
      [
        { timestamp: '2025-01-02T04:04:05+01:00', sampledValue: [{ value: '1' }] },
        { timestamp: 'yesterday', sampledValue: [{ value: '2' }] },
        { timestamp: new Date(now + 3_600_000).toISOString(), sampledValue: [{ value: '3' }] },
      ],
      now,
    )
    expect(result.records).toEqual([{ kind: 'evse', rid: 'CS1-1', q: 'energy_import', v: 1, t }])
    expect(result.skipped.map((s) => s.reason)).toEqual([
      'timestamp is not a date',
      'timestamp is too far in the future',
    ])
  })

  test('the session energy register ignores phases and other measurands', () => {
    expect(
      energyRegisterWh([
        {
          timestamp: T,
          sampledValue: [
            { value: '5', unit: 'kWh' },
            { value: '1', unit: 'kWh', phase: 'L1' },
            { measurand: 'Power.Active.Import', value: '7', unit: 'kW' },
          ],
        },
      ]),
    ).toBe(5000)
  })

  test('a sample normalises alone too', () => {
    expect(
      normaliseSample({ value: '1.5', measurand: 'Energy.Active.Export.Register', unit: 'kWh' }, false),
    ).toEqual({
      quantity: 'energy_export',
      value: 1500,
    })
  })
})

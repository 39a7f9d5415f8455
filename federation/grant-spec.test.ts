import { describe, expect, it, test } from 'vitest'
import { thrown } from '../test/helpers/check.ts'
import { type Grant, parseGrant } from './agreement.ts'
import { describeGrant, parseGrantSpec } from './grant-spec.ts'

const EXAMPLE = 'telemetry:kinds=evse;quantities=power,energy_import;minInterval=60s'

describe('parseGrantSpec', () => {
  it('parses the ARCHITECTURE example', () => {
    expect(parseGrantSpec(EXAMPLE)).toEqual({
      data: 'telemetry',
      kinds: ['evse'],
      quantities: ['power', 'energy_import'],
      minIntervalMs: 60_000,
    })
  })

  it.each<[string, Grant]>([
    [
      'telemetry:kinds=evse,station;rids=cs-1,cs-2;sites=depot-north;quantities=power_l1,soc',
      {
        data: 'telemetry',
        kinds: ['evse', 'station'],
        rids: ['cs-1', 'cs-2'],
        sites: ['depot-north'],
        quantities: ['power_l1', 'soc'],
      },
    ],
    [
      'standing:kinds=evse;attrs=max_power,connector.type,ocpp:vendor',
      { data: 'standing', kinds: ['evse'], attrs: ['max_power', 'connector.type', 'ocpp:vendor'] },
    ],
    [
      'events:kinds=evse,battery;types=session_started,fault',
      { data: 'events', kinds: ['evse', 'battery'], types: ['session_started', 'fault'] },
    ],
    [
      'control:kinds=evse;rids=cs-1;commands=limit_power,reset',
      { data: 'control', kinds: ['evse'], rids: ['cs-1'], commands: ['limit_power', 'reset'] },
    ],
  ])('parses %s', (spec, grant) => {
    expect(parseGrantSpec(spec)).toEqual(grant)
  })

  it.each([
    ' telemetry : kinds = evse ; quantities = power , energy_import ; minInterval = 60s ',
    'telemetry:kinds=evse;;quantities=power,,energy_import,;minInterval=60s;',
    '\ttelemetry:\tkinds=evse;\n quantities=power, energy_import;minInterval=60s\n',
  ])('tolerates whitespace and empty parts: %j', (spec) => {
    expect(parseGrantSpec(spec)).toEqual(parseGrantSpec(EXAMPLE))
  })

  it.each([
    ['500ms', 500],
    ['1s', 1000],
    ['1.5s', 1500],
    ['5m', 300_000],
    ['2h', 7_200_000],
    ['1d', 86_400_000],
    ['0s', 0],
  ])('reads minInterval=%s as %d ms', (duration, ms) => {
    const grant = parseGrantSpec(`telemetry:kinds=evse;quantities=power;minInterval=${duration}`)
    expect(grant).toMatchObject({ data: 'telemetry', minIntervalMs: ms })
  })

  it('lets a later key win over an earlier one', () => {
    expect(parseGrantSpec(`${EXAMPLE};minInterval=5m`)).toMatchObject({ minIntervalMs: 300_000 })
  })

  it.each([
    ['a missing colon', 'telemetry kinds=evse;quantities=power', 'grant'],
    ['a part without =', 'telemetry:kinds=evse;quantities', 'grant'],
    ['an unknown key', 'telemetry:kinds=evse;quantities=power;interval=60s', 'grant.interval'],
    ['a key in another case', 'telemetry:Kinds=evse;quantities=power', 'grant.Kinds'],
    ['unknown data', 'weather:kinds=evse;quantities=power', 'grant.data'],
    ['empty data', ':kinds=evse;quantities=power', 'grant.data'],
    ['data in another case', 'Telemetry:kinds=evse;quantities=power', 'grant.data'],
    [
      'a duration without a number',
      `telemetry:kinds=evse;quantities=power;minInterval=soon`,
      'grant.minInterval',
    ],
    [
      'a duration without a unit',
      `telemetry:kinds=evse;quantities=power;minInterval=60`,
      'grant.minInterval',
    ],
    ['a negative duration', `telemetry:kinds=evse;quantities=power;minInterval=-5s`, 'grant.minInterval'],
    ['an unknown unit', `telemetry:kinds=evse;quantities=power;minInterval=5w`, 'grant.minInterval'],
    ['an empty duration', `telemetry:kinds=evse;quantities=power;minInterval=`, 'grant.minInterval'],
    ['an empty kinds list', 'telemetry:kinds=;quantities=power', 'grant.kinds'],
    ['a kinds list of commas', 'telemetry:kinds=, ,;quantities=power', 'grant.kinds'],
    ['missing kinds', 'telemetry:quantities=power', 'grant.kinds'],
    ['an empty quantities list', 'telemetry:kinds=evse;quantities=', 'grant.quantities'],
    ['missing quantities', 'telemetry:kinds=evse', 'grant.quantities'],
    ['an unknown kind', 'telemetry:kinds=toaster;quantities=power', 'grant.kinds[0]'],
    ['an unknown quantity', 'telemetry:kinds=evse;quantities=power,wattage', 'grant.quantities[1]'],
    ['a duplicate quantity', 'telemetry:kinds=evse;quantities=power,power', 'grant.quantities[1]'],
    ['a bad rid', 'telemetry:kinds=evse;rids=cs 1;quantities=power', 'grant.rids[0]'],
    ['minInterval on standing data', 'standing:kinds=evse;attrs=name;minInterval=60s', 'grant.minIntervalMs'],
    ['quantities on events', 'events:kinds=evse;types=fault;quantities=power', 'grant.quantities'],
    ['an empty commands list', 'control:kinds=evse;commands=', 'grant.commands'],
    ['an empty attrs list', 'standing:kinds=evse;attrs=', 'grant.attrs'],
    ['an empty types list', 'events:kinds=evse;types=', 'grant.types'],
    ['an empty spec', '', 'grant'],
  ])('refuses %s with AgreementFormatError at %s', (_, spec, path) => {
    const error = thrown(() => parseGrantSpec(spec))
    expect(error.name).toBe('AgreementFormatError')
    expect(error.path).toBe(path)
  })

  // `data in GRANT_KEYS` (agreement.ts parseGrant) also holds for names inherited from
  // Object.prototype: the CLI and HTTP API get a TypeError instead of a named refusal.
  for (const data of ['constructor', 'toString', '__proto__']) {
    test(`refuses data '${data}' with AgreementFormatError`, () => {
      const error = thrown(() => parseGrantSpec(`${data}:kinds=evse`))
      expect(error.name).toBe('AgreementFormatError')
      expect(error.path).toBe('grant.data')
    })
  }
})

describe('describeGrant', () => {
  const provider = 'Acme Charging'
  const consumer = 'GridCo'

  it('says who receives which readings of whose resources, and how often', () => {
    const sentence = describeGrant(parseGrantSpec(EXAMPLE), provider, consumer)
    expect(sentence).toBe(
      "GridCo receives power and energy_import readings of Acme Charging's evse resources, at most one per 1 min",
    )
  })

  it.each([
    ['250ms', '250 ms'],
    ['30s', '30 s'],
    ['90s', '90 s'],
    ['1.5s', '1500 ms'],
    ['15m', '15 min'],
    ['2h', '2 h'],
    ['1d', '24 h'],
  ])('puts minInterval=%s as "%s"', (duration, words) => {
    const grant = parseGrantSpec(`telemetry:kinds=evse;quantities=power;minInterval=${duration}`)
    expect(describeGrant(grant, provider, consumer)).toMatch(new RegExp(`, at most one per ${words}$`))
  })

  it('mentions no interval when there is none', () => {
    const sentence = describeGrant(
      parseGrantSpec('telemetry:kinds=evse;quantities=power'),
      provider,
      consumer,
    )
    expect(sentence).toBe("GridCo receives power readings of Acme Charging's evse resources")
  })

  it('lists three or more items with commas and a final "and"', () => {
    const grant = parseGrantSpec('telemetry:kinds=evse,station,battery;quantities=power,voltage,current')
    expect(describeGrant(grant, provider, consumer)).toBe(
      "GridCo receives power, voltage and current readings of Acme Charging's evse, station and battery resources",
    )
  })

  it('names the resource ids and sites the grant is limited to', () => {
    const one = parseGrantSpec('telemetry:kinds=evse;rids=cs-1,cs-2;sites=depot;quantities=power')
    expect(describeGrant(one, provider, consumer)).toBe(
      "GridCo receives power readings of Acme Charging's evse resources, only cs-1 and cs-2, at site depot",
    )
    const two = parseGrantSpec('events:kinds=evse;sites=north,south;types=fault')
    expect(describeGrant(two, provider, consumer)).toBe(
      "GridCo receives fault events of Acme Charging's evse resources, at sites north and south",
    )
  })

  it('says standing data is projected to the listed attributes', () => {
    const grant = parseGrantSpec('standing:kinds=evse;attrs=name,max_power')
    expect(describeGrant(grant, provider, consumer)).toBe(
      "GridCo receives the name and max_power attributes of Acme Charging's evse resources (nothing else of them)",
    )
  })

  it('says control goes from the consumer to the provider, with its bounds', () => {
    const plain = parseGrantSpec('control:kinds=evse;commands=limit_power')
    expect(describeGrant(plain, provider, consumer)).toBe(
      "GridCo may send limit_power to Acme Charging's evse resources",
    )
    const bounded = parseGrant(
      {
        data: 'control',
        kinds: ['evse'],
        commands: ['limit_power', 'reset'],
        bounds: { limit_power: { min: 0, max: 11_000 }, reset: { max: 1 } },
      },
      'grant',
    )
    expect(describeGrant(bounded, provider, consumer)).toBe(
      "GridCo may send limit_power and reset to Acme Charging's evse resources (limit_power within 0…11000; reset within −∞…1)",
    )
  })

  it('swaps the parties when they are given the other way round', () => {
    const sentence = describeGrant(parseGrantSpec(EXAMPLE), consumer, provider)
    expect(sentence.startsWith('Acme Charging receives')).toBe(true)
    expect(sentence).toContain("of GridCo's evse resources")
  })
})

import { generateKeyPairSync } from 'node:crypto'
import { describe, expect, it, test } from 'vitest'
import type { Resource } from '../data-plane/index.ts'
import { base64url, type Grant, newAgreementBody } from './agreement.ts'
import { compileScope, IntervalGate, minInterval, projectResource, withinProjection } from './scope.ts'

/** A party with a real ed25519 key (the body parser checks the key's shape). */
function party(org: string): { org: string; key: string } {
  const { publicKey } = generateKeyPairSync('ed25519')
  return {
    org,
    key: base64url(new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }).subarray(-32))),
  }
}

const PROVIDER = party('Acme Charging')
const CONSUMER = party('GridCo')

/** The compiled scope of a valid agreement holding these grants (they go through the body parser). */
function scopeOf(...grants: Grant[]) {
  return compileScope(
    newAgreementBody({
      provider: PROVIDER,
      consumer: CONSUMER,
      purpose: 'scope unit test',
      validFrom: 0,
      validUntil: Date.UTC(2100, 0, 1),
      grants,
    }),
  )
}

/** A fixed site map, as the provider's site index would answer it. */
const sites =
  (map: Record<string, string>) =>
  (kind: string, rid: string): string | undefined =>
    map[`${kind}.${rid}`]

const EVSE_POWER: Grant = { data: 'telemetry', kinds: ['evse'], quantities: ['power', 'energy_import'] }

describe('compileScope: areas', () => {
  it('reads only the streams of the kinds of data granted', () => {
    expect(scopeOf(EVSE_POWER).areas).toEqual(['tel'])
    expect(scopeOf({ data: 'events', kinds: ['evse'], types: ['fault'] }, EVSE_POWER).areas).toEqual([
      'tel',
      'evt',
    ])
    expect(
      scopeOf(
        EVSE_POWER,
        { data: 'standing', kinds: ['evse'], attrs: ['name'] },
        { data: 'events', kinds: ['evse'], types: ['fault'] },
      ).areas,
    ).toEqual(['tel', 'std', 'evt'])
  })

  it('reads no stream at all for an agreement that only grants control', () => {
    expect(scopeOf({ data: 'control', kinds: ['evse'], commands: ['limit_power'] }).areas).toEqual([])
  })
})

describe('compileScope: which records a grant lets through', () => {
  const scope = scopeOf(
    { data: 'telemetry', kinds: ['evse', 'station'], rids: ['cs-1', 'cs-1-1'], quantities: ['power'] },
    { data: 'telemetry', kinds: ['meter'], quantities: ['energy_import'] },
    { data: 'events', kinds: ['evse'], types: ['fault', 'session_start'] },
    { data: 'standing', kinds: ['station'], attrs: ['name'] },
  )

  it.each([
    ['oe.tel.evse.cs-1-1.power', 'a granted kind, rid and quantity'],
    ['oe.tel.station.cs-1.power', 'the other granted kind'],
    ['oe.tel.meter.any-meter-at-all.energy_import', 'any rid when the grant lists none'],
    ['oe.evt.evse.CP7-1.fault', 'a granted event type'],
    ['oe.evt.evse.CP7-1.session_start', 'the other granted event type'],
    ['oe.std.station.cs-1', 'standing data of a granted kind'],
  ])('%s passes (%s)', (subject) => {
    expect(scope.check(subject)).toMatchObject({ ok: true })
  })

  it.each([
    ['oe.tel.evse.cs-2-1.power', 'a rid the grant does not list'],
    ['oe.tel.pv.cs-1.power', 'a kind the grant does not list'],
    ['oe.tel.evse.cs-1-1.energy_import', 'a quantity granted for meters only'],
    ['oe.tel.evse.cs-1-1.power_l1', 'a phase of a granted quantity (granted quantities are exact)'],
    ['oe.tel.meter.m1.power', 'power of meters'],
    ['oe.evt.evse.CP7-1.session_stop', 'an event type not granted'],
    ['oe.evt.station.cs-1.fault', 'events of a kind granted for standing data only'],
    ['oe.std.evse.CP7-1', 'standing data of a kind granted for readings only'],
  ])('%s is not granted (%s)', (subject) => {
    expect(scope.check(subject)).toEqual({ ok: false, reason: 'not_granted' })
  })

  it('gives the grant that allowed the record', () => {
    expect(scope.check('oe.tel.meter.m9.energy_import')).toEqual({
      ok: true,
      grant: { data: 'telemetry', kinds: ['meter'], quantities: ['energy_import'] },
    })
  })

  it('of two grants allowing a reading, applies the one with the shortest interval', () => {
    const two = scopeOf(
      { data: 'telemetry', kinds: ['evse'], quantities: ['power'], minIntervalMs: 60_000 },
      { data: 'telemetry', kinds: ['evse'], quantities: ['power', 'soc'], minIntervalMs: 5_000 },
    )
    expect(two.check('oe.tel.evse.e1.power')).toMatchObject({ ok: true, grant: { minIntervalMs: 5_000 } })
    const unlimited = scopeOf(
      { data: 'telemetry', kinds: ['evse'], quantities: ['power'], minIntervalMs: 60_000 },
      { data: 'telemetry', kinds: ['evse'], quantities: ['power'] },
    )
    const decision = unlimited.check('oe.tel.evse.e1.power')
    expect(decision.ok && minInterval(decision.grant)).toBe(0)
  })

  it('never lets a control grant read anything', () => {
    const control = scopeOf({ data: 'control', kinds: ['evse'], commands: ['limit_power'] })
    expect(control.check('oe.tel.evse.e1.power')).toEqual({ ok: false, reason: 'not_granted' })
    expect(control.check('oe.std.evse.e1')).toEqual({ ok: false, reason: 'not_granted' })
    expect(control.check('oe.ctl.evse.e1.limit_power')).toEqual({ ok: false, reason: 'bad_subject' })
  })
})

describe('compileScope: subjects that are not records', () => {
  // A scope that would grant almost anything, so only the subject's shape can refuse.
  const scope = scopeOf(
    { data: 'telemetry', kinds: ['evse', 'meter'], quantities: ['power'] },
    { data: 'events', kinds: ['evse'], types: ['fault'] },
    { data: 'standing', kinds: ['evse'], attrs: ['name'] },
  )

  it.each([
    ['oe.tel.evse.*.power', 'a wildcard rid'],
    ['oe.tel.evse.>', 'a tail wildcard'],
    ['oe.tel.*.e1.power', 'a wildcard kind'],
    ['oe.tel.evse.e1.*', 'a wildcard quantity'],
    ['oe.evt.evse.e1.*', 'a wildcard event type'],
    ['oe.tel.evse..power', 'an empty rid'],
    ['oe.tel.evse.-e1.power', 'a rid starting with a dash'],
    ['oe.tel.evse.e 1.power', 'a rid with a space'],
    [`oe.tel.evse.${'x'.repeat(129)}.power`, 'a rid over 128 characters'],
    ['oe.tel.toaster.e1.power', 'an unknown kind'],
    ['oe.tel.evse.e1.horsepower', 'an unknown quantity'],
    ['oe.tel.evse.e1', 'a reading without a quantity'],
    ['oe.tel.evse.e1.power.extra', 'a reading with an extra token'],
    ['oe.evt.evse.e1', 'an event without a type'],
    ['oe.evt.evse.e1.Fault', 'an event type that is not a lower-case token'],
    ['oe.evt.evse.e1.fault.extra', 'an event with an extra token'],
    ['oe.std.evse.e1.name', 'standing data with an extra token'],
    ['oe.std.evse', 'standing data without a rid'],
    ['oe.ctl.evse.e1.limit_power', 'a control subject'],
    ['oe.peer.gridco.tel.evse.e1.power', "a peer's subject"],
    ['oe.__proto__.evse.e1', 'an area that is an object property'],
    ['oe.constructor.evse.e1', 'another object property as area'],
    ['xx.tel.evse.e1.power', 'another prefix'],
    ['', 'nothing'],
  ])('%s is a bad subject (%s)', (subject) => {
    expect(scope.check(subject)).toEqual({ ok: false, reason: 'bad_subject' })
  })
})

describe('compileScope: grants limited to sites', () => {
  const BY_SITE: Grant = { data: 'telemetry', kinds: ['evse'], sites: ['depot-north'], quantities: ['power'] }
  const map = sites({ 'evse.n1': 'depot-north', 'evse.s1': 'depot-south' })

  it('lets a resource at a granted site through', () => {
    expect(scopeOf(BY_SITE).check('oe.tel.evse.n1.power', map)).toMatchObject({ ok: true })
  })

  it("refuses a resource at another site, with the reason 'site'", () => {
    expect(scopeOf(BY_SITE).check('oe.tel.evse.s1.power', map)).toEqual({ ok: false, reason: 'site' })
  })

  it('refuses a resource whose site is unknown, and refuses all when no site map is given', () => {
    const scope = scopeOf(BY_SITE)
    expect(scope.check('oe.tel.evse.nowhere.power', map)).toEqual({ ok: false, reason: 'site' })
    expect(scope.check('oe.tel.evse.n1.power')).toEqual({ ok: false, reason: 'site' })
  })

  it('checks the rest of the grant before the site', () => {
    expect(scopeOf(BY_SITE).check('oe.tel.evse.n1.soc', map)).toEqual({ ok: false, reason: 'not_granted' })
    expect(scopeOf(BY_SITE).check('oe.tel.meter.n1.power', map)).toEqual({ ok: false, reason: 'not_granted' })
  })

  it('lets the consumer (ignoreSites) pass a resource whose site it does not know, but not a known site outside the grant', () => {
    const scope = scopeOf(BY_SITE)
    // The consumer knows only the sites the provider's standing data told it.
    expect(scope.check('oe.tel.evse.s1.power', undefined, true)).toMatchObject({ ok: true })
    expect(scope.check('oe.tel.evse.nowhere.power', map, true)).toMatchObject({ ok: true })
    expect(scope.check('oe.tel.evse.n1.power', map, true)).toMatchObject({ ok: true })
    expect(scope.check('oe.tel.evse.s1.power', map, true)).toEqual({ ok: false, reason: 'site' })
    // The rest of the grant still applies.
    expect(scope.check('oe.tel.evse.s1.soc', undefined, true)).toEqual({ ok: false, reason: 'not_granted' })
  })

  it('lets a record through another grant that is not limited to sites', () => {
    const scope = scopeOf(BY_SITE, {
      data: 'telemetry',
      kinds: ['evse'],
      quantities: ['power'],
      minIntervalMs: 60_000,
    })
    expect(scope.check('oe.tel.evse.s1.power', map)).toMatchObject({
      ok: true,
      grant: { minIntervalMs: 60_000 },
    })
    // At the granted site the unthrottled site grant is the more generous one.
    expect(scope.check('oe.tel.evse.n1.power', map)).toMatchObject({
      ok: true,
      grant: { sites: ['depot-north'] },
    })
  })

  it('does not remember a decision that depended on the site', () => {
    const scope = scopeOf(BY_SITE)
    const assignment: Record<string, string> = { 'evse.n1': 'depot-north' }
    const live = sites(assignment)
    expect(scope.check('oe.tel.evse.n1.power', live)).toMatchObject({ ok: true })
    // The resource moves to another site: the same subject is now refused…
    assignment['evse.n1'] = 'depot-south'
    expect(scope.check('oe.tel.evse.n1.power', live)).toEqual({ ok: false, reason: 'site' })
    // …and back again.
    assignment['evse.n1'] = 'depot-north'
    expect(scope.check('oe.tel.evse.n1.power', live)).toMatchObject({ ok: true })
  })

  it("does not let the consumer's decision for an unknown site answer a check that needs the site", () => {
    const scope = scopeOf(BY_SITE)
    const learned: Record<string, string> = {}
    expect(scope.check('oe.tel.evse.s1.power', undefined, true)).toMatchObject({ ok: true })
    expect(scope.check('oe.tel.evse.s1.power', map)).toEqual({ ok: false, reason: 'site' })
    expect(scope.check('oe.tel.evse.s1.power')).toEqual({ ok: false, reason: 'site' })
    // The consumer learns the site later: the subject it let through before is now refused.
    expect(scope.check('oe.tel.evse.s1.power', sites(learned), true)).toMatchObject({ ok: true })
    learned['evse.s1'] = 'depot-south'
    expect(scope.check('oe.tel.evse.s1.power', sites(learned), true)).toEqual({ ok: false, reason: 'site' })
  })

  it.each<[string, Grant, string]>([
    [
      'standing data',
      { data: 'standing', kinds: ['evse'], sites: ['depot-north'], attrs: ['name'] },
      'oe.std.evse.%s',
    ],
    [
      'events',
      { data: 'events', kinds: ['evse'], sites: ['depot-north'], types: ['fault'] },
      'oe.evt.evse.%s.fault',
    ],
  ])('limits %s to sites too', (_name, grant, pattern) => {
    const scope = scopeOf(grant)
    expect(scope.check(pattern.replace('%s', 'n1'), map)).toMatchObject({ ok: true })
    expect(scope.check(pattern.replace('%s', 's1'), map)).toEqual({ ok: false, reason: 'site' })
    expect(scope.check(pattern.replace('%s', 'gone'), map)).toEqual({ ok: false, reason: 'site' })
  })
})

describe('projectResource and withinProjection', () => {
  const resource: Resource = {
    kind: 'evse',
    rid: 'CP1-1',
    site: 'depot-north',
    name: 'Bay 1',
    attrs: { maxPowerW: 22_000, vendor: 'ACME', contractRef: 'secret-123' },
    updated: 1_700_000_000_000,
  }

  it('sends only the granted attributes; everything else stays home', () => {
    const grant: Grant = { data: 'standing', kinds: ['evse'], attrs: ['maxPowerW', 'firmware'] }
    const projected = projectResource(resource, grant)
    expect(projected).toEqual({
      kind: 'evse',
      rid: 'CP1-1',
      attrs: { maxPowerW: 22_000 },
      updated: resource.updated,
    })
    expect(JSON.stringify(projected)).not.toMatch(/secret|ACME|Bay 1|depot-north/)
    expect(withinProjection(projected, grant)).toBe(true)
  })

  it('sends the name and the site only when granted by name', () => {
    const withName = projectResource(resource, { data: 'standing', kinds: ['evse'], attrs: ['name'] })
    expect(withName).toEqual({
      kind: 'evse',
      rid: 'CP1-1',
      name: 'Bay 1',
      attrs: {},
      updated: resource.updated,
    })
    const withSite = projectResource(resource, {
      data: 'standing',
      kinds: ['evse'],
      attrs: ['site', 'vendor'],
    })
    expect(withSite).toEqual({
      kind: 'evse',
      rid: 'CP1-1',
      site: 'depot-north',
      attrs: { vendor: 'ACME' },
      updated: resource.updated,
    })
  })

  it('does not invent fields the resource does not have', () => {
    const bare: Resource = { kind: 'evse', rid: 'CP2-1', attrs: {}, updated: 1 }
    expect(
      projectResource(bare, { data: 'standing', kinds: ['evse'], attrs: ['name', 'site', 'toString'] }),
    ).toEqual({ kind: 'evse', rid: 'CP2-1', attrs: {}, updated: 1 })
  })

  it('sends no attributes under a grant that is not for standing data', () => {
    expect(projectResource(resource, EVSE_POWER)).toEqual({
      kind: 'evse',
      rid: 'CP1-1',
      attrs: {},
      updated: resource.updated,
    })
  })

  it("the consumer's re-check refuses anything beyond the grant", () => {
    const grant: Grant = { data: 'standing', kinds: ['evse'], attrs: ['maxPowerW'] }
    const base = { kind: 'evse' as const, rid: 'CP1-1', updated: 1 }
    expect(withinProjection({ ...base, attrs: { maxPowerW: 1 } }, grant)).toBe(true)
    expect(withinProjection({ ...base, attrs: {} }, grant)).toBe(true)
    expect(withinProjection({ ...base, attrs: { maxPowerW: 1, vendor: 'x' } }, grant)).toBe(false)
    expect(withinProjection({ ...base, name: 'Bay 1', attrs: {} }, grant)).toBe(false)
    expect(withinProjection({ ...base, site: 'depot-north', attrs: {} }, grant)).toBe(false)
    expect(withinProjection(resource, grant)).toBe(false)
    expect(withinProjection({ ...base, attrs: {} }, EVSE_POWER)).toBe(false)
  })
})

describe('minInterval', () => {
  it("is a telemetry grant's minIntervalMs, and 0 otherwise", () => {
    expect(minInterval({ ...EVSE_POWER, minIntervalMs: 60_000 })).toBe(60_000)
    expect(minInterval(EVSE_POWER)).toBe(0)
    expect(minInterval({ data: 'standing', kinds: ['evse'], attrs: ['name'] })).toBe(0)
    expect(minInterval({ data: 'events', kinds: ['evse'], types: ['fault'] })).toBe(0)
    expect(minInterval({ data: 'control', kinds: ['evse'], commands: ['limit_power'] })).toBe(0)
  })
})

describe('IntervalGate', () => {
  test('the first reading of each interval passes, the rest of the interval is held back', () => {
    const gate = new IntervalGate()
    // A reading every 250 ms for 5 s, at most one a second.
    const passed = Array.from({ length: 20 }, (_, i) => i * 250).filter((t) =>
      gate.pass('evse.e1.power', t, 1_000),
    )
    expect(passed).toEqual([0, 1_000, 2_000, 3_000, 4_000])
  })

  test('the interval counts from the last reading that passed', () => {
    const gate = new IntervalGate()
    const passed = [0, 900, 1_800, 2_700, 3_600].filter((t) => gate.pass('k', t, 1_000))
    expect(passed).toEqual([0, 1_800, 3_600])
  })

  test('a late, older reading does not pass', () => {
    const gate = new IntervalGate()
    expect(gate.pass('k', 10_000, 1_000)).toBe(true)
    expect(gate.pass('k', 9_500, 1_000)).toBe(false)
    expect(gate.pass('k', 2_000, 1_000)).toBe(false)
  })

  test('each resource and quantity has its own interval', () => {
    const gate = new IntervalGate()
    expect(gate.pass('evse.e1.power', 0, 1_000)).toBe(true)
    expect(gate.pass('evse.e1.soc', 10, 1_000)).toBe(true)
    expect(gate.pass('evse.e2.power', 20, 1_000)).toBe(true)
    expect(gate.pass('evse.e1.power', 30, 1_000)).toBe(false)
    expect(gate.pass('evse.e2.power', 40, 1_000)).toBe(false)
  })

  test('an interval of 0 passes every reading', () => {
    const gate = new IntervalGate()
    expect([0, 0, 1, 1, 2, 5, 3].map((t) => gate.pass('k', t, 0))).toEqual([
      true,
      true,
      true,
      true,
      true,
      true,
      true,
    ])
  })
})

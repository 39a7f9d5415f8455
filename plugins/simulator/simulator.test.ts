/**
 * The simulator against the shared plugin compliance suite, then its own behaviour on an
 * in-memory data plane with fake time: daily shapes, bounds, registers, limit_power, repeatability.
 */
import { afterEach, beforeAll, describe, expect, test, vi } from 'vitest'
import type { ResourceKind } from '../../data-plane/index.ts'
import { createPluginHarness, type FakeDataPlane, runPluginCompliance } from '../compliance.ts'
import { validatePluginConfig } from '../host.ts'
import { simulatorPlugin } from './index.ts'

runPluginCompliance(simulatorPlugin, {
  validConfig: { sites: 2, interval: '1s', seed: 7 },
  invalidConfig: { interval: 'fast' },
})

const HOUR = 3_600_000
/** A local time of day on a fixed date, so the shapes do not depend on when or where tests run. */
const at = (hours: number, minutes = 0): Date => new Date(2025, 2, 20, hours, minutes)

const harnesses: { dispose(): Promise<void> }[] = []

afterEach(async () => {
  while (harnesses.length > 0) await harnesses.pop()!.dispose()
  vi.useRealTimers()
})

/** Start a simulator at local time `start` (fake clock) and let it run for `runMs`. */
async function simulate(config: Record<string, unknown>, start: Date, runMs = 0) {
  vi.useFakeTimers({
    toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'],
    now: start,
  })
  const harness = await createPluginHarness(simulatorPlugin, config)
  harnesses.push(harness)
  await harness.instance.start!({})
  if (runMs > 0) await vi.advanceTimersByTimeAsync(runMs)
  return harness
}

function series(dataPlane: FakeDataPlane, kind: ResourceKind, rid: string, q: string) {
  return dataPlane.telemetry.filter((r) => r.kind === kind && r.rid === rid && r.q === q)
}

const issuesOf = (slice: Record<string, unknown>): string[] => {
  try {
    validatePluginConfig({ simulator: { enabled: true, ...slice } }, [simulatorPlugin])
    return []
  } catch (error) {
    return (error as { issues: { path: string }[] }).issues.map((issue) => issue.path)
  }
}

describe('config', () => {
  test('defaults: 3 sites, 5 s, 2 EVSEs per site, starting now', () => {
    expect(simulatorPlugin.configSchema.parse({})).toEqual({
      sites: 3,
      interval: 5_000,
      evses_per_site: 2,
      start: 'now',
    })
    expect(simulatorPlugin.configSchema.parse({ interval: '100ms', seed: 1.5 })).toMatchObject({
      interval: 100,
      seed: 1.5,
    })
  })

  test('bad values are refused by key path', () => {
    expect(issuesOf({ interval: '50ms' })).toEqual(['plugins.simulator.interval'])
    expect(issuesOf({ interval: '5 parsecs' })).toEqual(['plugins.simulator.interval'])
    expect(issuesOf({ sites: 0 })).toEqual(['plugins.simulator.sites'])
    expect(issuesOf({ sites: 2.5 })).toEqual(['plugins.simulator.sites'])
    expect(issuesOf({ evses_per_site: -1 })).toEqual(['plugins.simulator.evses_per_site'])
    expect(issuesOf({ seed: 'abc' })).toEqual(['plugins.simulator.seed'])
    expect(issuesOf({ start: 'yesterday' })).toEqual(['plugins.simulator.start'])
    expect(issuesOf({ start: new Date(Date.now() + HOUR).toISOString() })).toEqual([
      'plugins.simulator.start',
    ])
  })

  test('start takes a past ISO time: readings are stamped from there, one interval apart', async () => {
    const { dataPlane } = await simulate(
      { sites: 1, interval: '2s', seed: 3, start: '2025-01-01T00:00:00Z' },
      at(15),
      10_000,
    )
    const times = series(dataPlane, 'meter', 'site-1-meter', 'power').map((r) => r.t)
    const origin = Date.parse('2025-01-01T00:00:00Z')
    expect(times).toEqual([0, 1, 2, 3, 4, 5].map((k) => origin + k * 2_000))
  })
})

describe('fleet', () => {
  test('standing data: each site has a site, meter, pv, battery and EVSEs with ratings', async () => {
    const { dataPlane, instance } = await simulate({ sites: 3, seed: 1 }, at(9))
    expect(dataPlane.upserts).toHaveLength(18)
    const site2 = [...dataPlane.resources.values()].filter((r) => r.rid.startsWith('site-2'))
    expect(site2.map((r) => `${r.kind}:${r.rid}`).sort()).toEqual([
      'battery:site-2-bat',
      'evse:site-2-evse-1',
      'evse:site-2-evse-2',
      'meter:site-2-meter',
      'pv:site-2-pv',
      'site:site-2',
    ])
    for (const resource of site2) {
      if (resource.kind !== 'site') expect(resource.site).toBe('site-2')
      expect(resource.attrs.simulated).toBe(true)
    }
    const attrs = (kind: string, rid: string) => dataPlane.resources.get(`${kind}.${rid}`)!.attrs
    expect(attrs('pv', 'site-2-pv')).toMatchObject({
      ratedPowerW: expect.any(Number),
      vendor: expect.any(String),
    })
    expect(attrs('battery', 'site-2-bat')).toMatchObject({
      capacityWh: expect.any(Number),
      ratedPowerW: expect.any(Number),
      model: expect.any(String),
    })
    expect(attrs('evse', 'site-2-evse-1')).toMatchObject({ maxPowerW: expect.any(Number) })
    expect(instance.status!()).toEqual({ sites: 3, resources: 18, published: dataPlane.telemetry.length })
  })

  test('every interval each site publishes meter, pv, battery and EVSE readings in canonical units', async () => {
    const { dataPlane, instance } = await simulate({ sites: 2, interval: '1s', seed: 2 }, at(10), 4_000)
    // The first tick at start, then one a second.
    expect(new Set(dataPlane.telemetry.map((r) => r.t)).size).toBe(5)
    const first = dataPlane.telemetry.filter((r) => r.t === at(10).getTime())
    expect(
      first
        .map((r) => `${r.rid}.${r.q}`)
        .filter((key) => key.startsWith('site-1-'))
        .sort(),
    ).toEqual([
      'site-1-bat.energy_export',
      'site-1-bat.energy_import',
      'site-1-bat.power',
      'site-1-bat.soc',
      'site-1-evse-1.energy_import',
      'site-1-evse-1.power',
      'site-1-evse-2.energy_import',
      'site-1-evse-2.power',
      'site-1-meter.energy_export',
      'site-1-meter.energy_import',
      'site-1-meter.frequency',
      'site-1-meter.power',
      'site-1-meter.voltage',
      'site-1-pv.energy_export',
      'site-1-pv.power',
    ])
    expect(instance.status!().published).toBe(dataPlane.telemetry.length)
  })
})

describe('daily shapes', () => {
  test('PV is exactly 0 at night and exports (negative) around noon', async () => {
    const night = await simulate({ sites: 3, interval: '10s', seed: 4 }, at(0, 30), 10 * 60_000)
    const nightPv = night.dataPlane.telemetry.filter((r) => r.kind === 'pv' && r.q === 'power')
    expect(nightPv.length).toBe(3 * 61)
    for (const record of nightPv) expect(Object.is(record.v, 0)).toBe(true)
    await night.dispose()
    vi.useRealTimers()

    const noon = await simulate({ sites: 3, interval: '10s', seed: 4 }, at(12), 10 * 60_000)
    const noonPv = noon.dataPlane.telemetry.filter((r) => r.kind === 'pv' && r.q === 'power')
    expect(noonPv.length).toBe(3 * 61)
    for (const record of noonPv) expect(record.v).toBeLessThan(0)
  })

  describe('over a whole day', () => {
    let dataPlane: FakeDataPlane
    const localHour = (t: number): number => new Date(t).getHours()

    beforeAll(async () => {
      const harness = await simulate({ sites: 3, interval: '60s', seed: 11 }, at(0), 24 * HOUR)
      await harness.dispose()
      vi.useRealTimers()
      dataPlane = harness.dataPlane
      expect(dataPlane.invalid).toEqual([])
      expect(harness.logger.entries).toEqual([])
    })

    test('PV never imports, and produces in daylight only', () => {
      const pv = dataPlane.telemetry.filter((r) => r.kind === 'pv' && r.q === 'power')
      for (const record of pv) expect(record.v).toBeLessThanOrEqual(0)
      const hours = new Set(pv.filter((r) => r.v < 0).map((r) => localHour(r.t)))
      expect(Math.min(...hours)).toBeGreaterThanOrEqual(5)
      expect(Math.max(...hours)).toBeLessThanOrEqual(18)
    })

    test('battery soc stays within 5–95 %, charging midday and discharging in the evening', () => {
      for (let n = 1; n <= 3; n++) {
        for (const record of series(dataPlane, 'battery', `site-${n}-bat`, 'soc')) {
          expect(record.v).toBeGreaterThanOrEqual(5)
          expect(record.v).toBeLessThanOrEqual(95)
        }
      }
      const power = dataPlane.telemetry.filter((r) => r.kind === 'battery' && r.q === 'power')
      const midday = power.filter((r) => localHour(r.t) >= 10 && localHour(r.t) < 15)
      const evening = power.filter((r) => localHour(r.t) >= 17 && localHour(r.t) < 22)
      expect(midday.filter((r) => r.v > 0).length).toBeGreaterThan(midday.length / 2)
      expect(evening.filter((r) => r.v < 0).length).toBeGreaterThan(evening.length / 2)
    })

    test('energy registers never decrease and grow by exactly what the power says', () => {
      const keys = new Set(
        dataPlane.telemetry.filter((r) => r.q.startsWith('energy_')).map((r) => `${r.kind}|${r.rid}|${r.q}`),
      )
      expect(keys.size).toBe(3 * (2 + 1 + 2 + 2))
      for (const key of keys) {
        const [kind, rid, q] = key.split('|') as [ResourceKind, string, string]
        const values = series(dataPlane, kind, rid, q).map((r) => r.v)
        for (let i = 1; i < values.length; i++) expect(values[i]!).toBeGreaterThanOrEqual(values[i - 1]!)
      }
      for (let n = 1; n <= 3; n++) {
        const power = series(dataPlane, 'meter', `site-${n}-meter`, 'power')
        const imported = series(dataPlane, 'meter', `site-${n}-meter`, 'energy_import')
        const exported = series(dataPlane, 'meter', `site-${n}-meter`, 'energy_export')
        let expectedImport = 0
        let expectedExport = 0
        for (let i = 1; i < power.length; i++) {
          const wh = (power[i]!.v * (power[i]!.t - power[i - 1]!.t)) / HOUR
          if (wh > 0) expectedImport += wh
          else expectedExport -= wh
        }
        expect(imported.at(-1)!.v - imported[0]!.v).toBeCloseTo(expectedImport, 1)
        expect(exported.at(-1)!.v - exported[0]!.v).toBeCloseTo(expectedExport, 1)
      }
    })

    test('the meter reads the site net: EV charging and battery charging add, PV export subtracts', () => {
      const byTime = (rid: string, q: string, kind: ResourceKind) =>
        new Map(series(dataPlane, kind, rid, q).map((r) => [r.t, r.v]))
      const meter = byTime('site-1-meter', 'power', 'meter')
      const pv = byTime('site-1-pv', 'power', 'pv')
      const battery = byTime('site-1-bat', 'power', 'battery')
      const evse1 = byTime('site-1-evse-1', 'power', 'evse')
      const evse2 = byTime('site-1-evse-2', 'power', 'evse')
      for (const [t, net] of meter) {
        // What is left is the house load: positive, and well within a home's connection.
        const house = net - pv.get(t)! - battery.get(t)! - evse1.get(t)! - evse2.get(t)!
        expect(house).toBeGreaterThan(0)
        expect(house).toBeLessThan(10_000)
      }
    })

    test('EVs plug in and charge in sessions', () => {
      const started = dataPlane.events.filter((e) => e.type === 'session_started')
      const stopped = dataPlane.events.filter((e) => e.type === 'session_stopped')
      expect(started.length).toBeGreaterThan(0)
      expect(stopped.length).toBeGreaterThan(0)
      expect(stopped[0]!.event).toMatchObject({ session: expect.any(String), energyWh: expect.any(Number) })
      const evse = dataPlane.telemetry.filter((r) => r.kind === 'evse' && r.q === 'power')
      expect(evse.some((r) => r.v > 1_000)).toBe(true)
      expect(evse.some((r) => r.v === 0)).toBe(true)
      for (const record of evse) expect(record.v).toBeGreaterThanOrEqual(0)
    })

    test('voltage is about 230 V and frequency about 50 Hz', () => {
      for (const record of dataPlane.telemetry.filter((r) => r.q === 'voltage')) {
        expect(record.v).toBeGreaterThan(218)
        expect(record.v).toBeLessThan(242)
      }
      for (const record of dataPlane.telemetry.filter((r) => r.q === 'frequency')) {
        expect(record.v).toBeGreaterThan(49.85)
        expect(record.v).toBeLessThan(50.15)
      }
    })
  })
})

describe('limit_power', () => {
  test('clamps a charging EVSE, reports power_limit and limit_applied, and lifts at until', async () => {
    const { dataPlane, instance } = await simulate({ sites: 1, interval: '1s', seed: 5 }, at(19))
    await instance.actions!.plug_in!({ rid: 'site-1-evse-1', energyWh: 40_000 })
    await vi.advanceTimersByTimeAsync(5_000)
    const power = () => series(dataPlane, 'evse', 'site-1-evse-1', 'power')
    expect(power().at(-1)!.v).toBeGreaterThan(3_000)
    const applied = Date.now()
    await dataPlane.control({
      kind: 'evse',
      rid: 'site-1-evse-1',
      command: 'limit_power',
      payload: { v: 1_400, u: 'W', until: applied + 60_000, source: 'dso' },
    })
    expect(dataPlane.events.filter((e) => e.type === 'limit_applied')).toEqual([
      {
        kind: 'evse',
        rid: 'site-1-evse-1',
        type: 'limit_applied',
        event: expect.objectContaining({
          command: 'limit_power',
          v: 1_400,
          u: 'W',
          until: applied + 60_000,
          source: 'dso',
        }),
      },
    ])
    expect(series(dataPlane, 'evse', 'site-1-evse-1', 'power_limit').map((r) => r.v)).toEqual([1_400])
    await vi.advanceTimersByTimeAsync(30_000)
    // A tick may share the millisecond the limit arrived in; the clamped reading follows it.
    const limited = power().filter((r) => r.t > applied)
    expect(limited.length).toBeGreaterThan(25)
    for (const record of limited) {
      expect(record.v).toBeLessThanOrEqual(1_400)
      expect(record.v).toBeGreaterThan(1_300)
    }
    await vi.advanceTimersByTimeAsync(40_000)
    expect(dataPlane.events.some((e) => e.type === 'limit_expired' && e.rid === 'site-1-evse-1')).toBe(true)
    const maxPowerW = dataPlane.resources.get('evse.site-1-evse-1')!.attrs.maxPowerW
    expect(series(dataPlane, 'evse', 'site-1-evse-1', 'power_limit').map((r) => r.v)).toEqual([
      1_400,
      maxPowerW,
    ])
    expect(power().at(-1)!.v).toBeGreaterThan(3_000)
  })

  test('clamps a battery both ways; kW is converted', async () => {
    const { dataPlane } = await simulate({ sites: 2, interval: '1s', seed: 6 }, at(12, 30), 2_000)
    for (const rid of ['site-1-bat', 'site-2-bat'])
      await dataPlane.control({ kind: 'battery', rid, command: 'limit_power', payload: { v: 0.5, u: 'kW' } })
    const from = Date.now()
    await vi.advanceTimersByTimeAsync(10 * 60_000)
    const after = dataPlane.telemetry.filter((r) => r.kind === 'battery' && r.q === 'power' && r.t > from)
    expect(after.length).toBeGreaterThan(1_000)
    for (const record of after) expect(Math.abs(record.v)).toBeLessThanOrEqual(500)
    expect(dataPlane.telemetry.filter((r) => r.q === 'power_limit').map((r) => r.v)).toEqual([500, 500])
  })

  test('a bad command is acknowledged and reported; one for another resource is ignored', async () => {
    const { dataPlane } = await simulate({ sites: 1, seed: 7 }, at(19))
    const send = (rid: string, payload: Record<string, unknown>) =>
      dataPlane.control({ kind: 'evse', rid, command: 'limit_power', payload })
    await send('site-1-evse-1', { v: -5, u: 'W' })
    await send('site-1-evse-1', { v: 'lots' })
    await send('site-1-evse-1', { v: 1_000, u: 'MW' })
    await send('site-1-evse-1', { v: 1_000, until: Date.now() - 1 })
    await send('CS1-1', { v: 1_000, u: 'W' })
    const rejected = dataPlane.events.filter((e) => e.type === 'limit_rejected')
    expect(rejected).toHaveLength(4)
    expect(rejected.every((e) => e.rid === 'site-1-evse-1')).toBe(true)
    expect(rejected.map((e) => e.event.reason)).toEqual([
      expect.stringContaining('negative'),
      expect.stringContaining('number'),
      expect.stringContaining('unit'),
      expect.stringContaining('passed'),
    ])
    expect(dataPlane.events.filter((e) => e.type === 'limit_applied')).toEqual([])
    expect(dataPlane.telemetry.filter((r) => r.q === 'power_limit')).toEqual([])
  })

  test('commands after stop are left for redelivery', async () => {
    const { dataPlane, instance } = await simulate({ sites: 1, seed: 7 }, at(19))
    await instance.stop!()
    await expect(
      dataPlane.control({ kind: 'evse', rid: 'site-1-evse-1', command: 'limit_power', payload: { v: 1 } }),
    ).rejects.toThrow(/simulator/)
  })
})

describe('operation', () => {
  test('the same seed repeats the same fleet and readings; another seed does not', async () => {
    const run = async (seed: number) => {
      const harness = await simulate({ sites: 2, interval: '1s', seed }, at(18), 120_000)
      await harness.dispose()
      vi.useRealTimers()
      return {
        upserts: harness.dataPlane.upserts,
        telemetry: harness.dataPlane.telemetry,
        events: harness.dataPlane.events,
      }
    }
    const first = await run(42)
    const second = await run(42)
    const other = await run(43)
    expect(second).toEqual(first)
    expect(other.telemetry).not.toEqual(first.telemetry)
  })

  test('after a short stall the missed readings are made up, so the series has no gaps', async () => {
    const harness = await simulate({ sites: 1, interval: '1s', seed: 8 }, at(9))
    const { dataPlane } = harness
    const original = dataPlane.publishTelemetry
    let stalls = 1
    dataPlane.publishTelemetry = async (records) => {
      if (stalls-- > 0) await new Promise((resolve) => setTimeout(resolve, 3_500))
      await original(records)
    }
    await vi.advanceTimersByTimeAsync(20_000)
    const times = series(dataPlane, 'meter', 'site-1-meter', 'power').map((r) => r.t)
    expect(times).toEqual(Array.from({ length: 21 }, (_, k) => at(9).getTime() + k * 1_000))
    expect(harness.metrics.values.get('ticks_skipped_total')).toBeUndefined()
  })

  test('publishing slower than the interval for long skips ticks instead of piling them up', async () => {
    const harness = await simulate({ sites: 1, interval: '1s', seed: 8 }, at(9))
    const { dataPlane } = harness
    const original = dataPlane.publishTelemetry
    let inFlight = 0
    let most = 0
    dataPlane.publishTelemetry = async (records) => {
      inFlight += 1
      most = Math.max(most, inFlight)
      await new Promise((resolve) => setTimeout(resolve, 2_500))
      inFlight -= 1
      await original(records)
    }
    await vi.advanceTimersByTimeAsync(60_000)
    expect(most).toBe(1)
    const times = series(dataPlane, 'meter', 'site-1-meter', 'power').map((r) => r.t)
    expect(times.length).toBeGreaterThan(20)
    expect(times.length).toBeLessThan(30)
    for (const t of times) expect((t - at(9).getTime()) % 1_000).toBe(0)
    // Never further behind than the catch-up window.
    expect(at(9).getTime() + 60_000 - times.at(-1)!).toBeLessThanOrEqual(10_000)
    expect(harness.metrics.values.get('ticks_skipped_total')).toBeGreaterThan(20)
    // stop() waits for the publish in flight, which waits on the fake clock.
    const stopping = harness.instance.stop!()
    await vi.advanceTimersByTimeAsync(3_000)
    await stopping
  })
})

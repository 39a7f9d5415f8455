/** The simulator obeys the site commands the csip-aus client publishes (limit_export, …, connect). */
import { describe, expect, test } from 'vitest'
import { Fleet, type SiteCommand } from '../plugins/simulator/fleet.ts'
import { seededRandom } from '../plugins/simulator/random.ts'

describe('the simulator obeys the site commands the client publishes', () => {
  const noon = new Date(2026, 0, 15, 12, 0, 0).getTime()
  const run = (seed: number, command?: [SiteCommand, number]) => {
    const fleet = new Fleet({ sites: 1, evsesPerSite: 0, start: noon }, { random: seededRandom(seed) })
    for (let i = 0; i < 20; i++) fleet.step(noon + i * 1000, noon + i * 1000)
    if (command) fleet.applySiteLimit('site-1', command[0], { w: command[1] })
    const out = fleet.step(noon + 21_000, noon + 21_000)
    const value = (kind: string, q: string) => out.records.find((r) => r.kind === kind && r.q === q)!.v
    return { meter: value('meter', 'power'), pv: value('pv', 'power'), battery: value('battery', 'power') }
  }
  test('limit_export curtails PV to the limit; limit_generation caps generation; connect 0 stops the DER', () => {
    const free = run(5)
    expect(free.meter).toBeLessThan(-1000)
    expect(run(5, ['limit_export', 300]).meter).toBeGreaterThanOrEqual(-300)
    const generation = run(5, ['limit_generation', 1000])
    expect(-generation.pv - Math.min(0, generation.battery)).toBeLessThanOrEqual(1000)
    const off = run(5, ['connect', 0])
    expect(off).toMatchObject({ pv: 0, battery: 0 })
    expect(off.meter).toBeGreaterThan(0)
  })
})

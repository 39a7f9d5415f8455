import { describe, expect, test } from 'vitest'
import { MAX_STATIONS, StationRefusals } from './refusals.ts'

const refusal = (station: string, reason = 'wrong-password') => ({ station, reason, remote: '10.0.0.9' })

describe('StationRefusals', () => {
  test('the first refusal of a station is logged at once, the rest once per interval with the count', () => {
    const refusals = new StationRefusals(60_000)
    expect(refusals.note(refusal('CS1'), 0)).toBe(true)
    for (let i = 1; i <= 240; i++)
      expect(refusals.note(refusal('CS1', i % 2 ? 'unknown' : 'wrong-password'), i * 100)).toBe(false)
    expect(refusals.flush(59_999)).toEqual([])
    expect(refusals.flush(60_000)).toEqual([
      {
        station: 'CS1',
        reason: 'wrong-password',
        remote: '10.0.0.9',
        count: 240,
        reasons: { unknown: 120, 'wrong-password': 120 },
        since: 0,
        until: 60_000,
      },
    ])
    // Another interval with refusals: counted again; a quiet interval forgets the station.
    expect(refusals.note(refusal('CS1'), 61_000)).toBe(false)
    expect(refusals.flush(120_000)).toMatchObject([{ station: 'CS1', count: 1 }])
    expect(refusals.flush(180_000)).toEqual([])
    expect(refusals.note(refusal('CS1'), 181_000)).toBe(true)
  })

  test('stations are counted apart, and a single refusal needs no summary', () => {
    const refusals = new StationRefusals(1_000)
    expect(refusals.note(refusal('A'), 0)).toBe(true)
    expect(refusals.note(refusal('B'), 0)).toBe(true)
    expect(refusals.note(refusal('B'), 10)).toBe(false)
    expect(refusals.flush(1_000).map((summary) => [summary.station, summary.count])).toEqual([['B', 1]])
  })

  test(`memory is bounded: past ${MAX_STATIONS} stations new ones are counted together as '*'`, () => {
    const refusals = new StationRefusals(1_000)
    for (let i = 0; i < MAX_STATIONS; i++) refusals.note(refusal(`S${i}`), 0)
    expect(refusals.note(refusal('one-more'), 1)).toBe(false)
    expect(refusals.note(refusal('and-another'), 2)).toBe(false)
    expect(refusals.flush(1_001)).toEqual([expect.objectContaining({ station: '*', count: 2 })])
  })

  test('flush(now, true) at stop reports what is pending and forgets everything', () => {
    const refusals = new StationRefusals(60_000)
    refusals.note(refusal('CS1'), 0)
    refusals.note(refusal('CS1'), 5)
    expect(refusals.flush(10, true)).toMatchObject([{ station: 'CS1', count: 1, since: 0, until: 10 }])
    expect(refusals.note(refusal('CS1'), 20)).toBe(true)
  })

  test('a long station id is cut to 128 characters', () => {
    const refusals = new StationRefusals(1_000)
    refusals.note(refusal('x'.repeat(10_000)), 0)
    refusals.note(refusal('x'.repeat(10_000)), 1)
    expect(refusals.flush(1_000)[0]!.station).toHaveLength(128)
  })
})

import { describe, expect, it } from 'vitest'
import { RefusalAggregator } from './refusals.ts'

const event = (peerId: string) => ({
  peerId,
  direction: 'inbound' as const,
  remoteAddr: '/ip4/127.0.0.1/tcp/1',
})

describe('RefusalAggregator', () => {
  it('audits the first refusal of a key at once and the rest of the interval as one entry with a count', () => {
    const refusals = new RefusalAggregator(60_000)
    expect(refusals.note(event('k1'), 0)).toBe(true)
    for (let i = 1; i <= 240; i++) expect(refusals.note(event('k1'), i * 250)).toBe(false)
    expect(refusals.flush(59_999)).toEqual([])
    expect(refusals.flush(60_000)).toEqual([{ ...event('k1'), count: 240, since: 0, until: 60_000 }])
    expect(refusals.total).toBe(241)
  })

  it('forgets a key quiet for a whole interval, so its next refusal is audited at once', () => {
    const refusals = new RefusalAggregator(1_000)
    expect(refusals.note(event('k1'), 0)).toBe(true)
    expect(refusals.flush(1_000)).toEqual([])
    expect(refusals.note(event('k1'), 1_500)).toBe(true)
  })

  it('keeps each key apart, and bounds memory by counting keys beyond the limit together', () => {
    const refusals = new RefusalAggregator(1_000)
    for (let i = 0; i < 10_000; i++) expect(refusals.note(event(`k${i}`), 0)).toBe(true)
    expect(refusals.note(event('one-too-many'), 0)).toBe(false)
    expect(refusals.note(event('and-another'), 0)).toBe(false)
    const summaries = refusals.flush(1_000)
    expect(summaries).toEqual([{ ...event('*'), count: 1, since: 0, until: 1_000 }])
  })
})

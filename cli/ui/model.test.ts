/**
 * The UI's pure parts: records/s from successive counters, the row budget, fixed-width text,
 * and what each key does in each state.
 */
import { describe, expect, test } from 'vitest'
import { AT, IDS, snapshot } from './fixtures.ts'
import { cell, formatRate, formatSpan, sparkline, truncate, wrapText } from './format.ts'
import { reduceKey } from './keys.ts'
import { allocateRows, windowStart } from './layout.ts'
import { initialUiState, listsOf, type UiState } from './model.ts'
import { nextRates, RATE_HISTORY } from './rates.ts'
import { emptyView, nextView } from './use-node-data.ts'

describe('rates', () => {
  const sample = (recordsIn: number, at: number, recordsOut = 0, drops = 0) => ({
    recordsIn,
    recordsOut,
    drops,
    at,
  })

  test('records/s is the counter difference over the time between answers', () => {
    const first = nextRates({}, { a: sample(100, 0) })
    expect(first.a!.inPerSec).toBeUndefined()
    const second = nextRates(first, { a: sample(1100, 2000, 50, 4) })
    expect(second.a).toMatchObject({ inPerSec: 500, outPerSec: 25, dropsPerSec: 2, history: [525] })
  })

  test('a counter that went down (node restart) counts as 0, not negative', () => {
    const before = nextRates({}, { a: sample(5000, 0) })
    expect(nextRates(before, { a: sample(10, 1000) }).a!.inPerSec).toBe(0)
  })

  test('a repeated answer changes nothing; agreements that left are forgotten; history is bounded', () => {
    let table = nextRates({}, { a: sample(0, 0), b: sample(0, 0) })
    for (let i = 1; i <= RATE_HISTORY + 10; i++) table = nextRates(table, { a: sample(i * 10, i * 1000) })
    expect(table.b).toBeUndefined()
    expect(table.a!.history).toHaveLength(RATE_HISTORY)
    expect(nextRates(table, { a: table.a!.last })).toEqual(table)
  })

  test('a failed poll keeps the data and counts attempts; the next answer clears it', () => {
    const up = nextView(emptyView, snapshot())
    const down = nextView(nextView(up, new Error('gone'), AT + 1000), new Error('still gone'), AT + 2000)
    expect(down.snapshot).toBe(up.snapshot)
    expect(down.unreachable).toEqual({ message: 'still gone', since: AT + 1000, attempts: 2 })
    expect(nextView(down, snapshot({ at: AT + 3000 })).unreachable).toBeUndefined()
  })
})

describe('layout', () => {
  const blocks = [
    { panes: ['agreements'] as const, overhead: 2, items: 10 },
    { panes: ['pending'] as const, overhead: 1, items: 3 },
    { panes: ['peers', 'plugins'] as const, overhead: 1, items: 2 },
    { panes: ['audit'] as const, overhead: 1, items: 50 },
  ]

  test('every pane gets a row; the focused one is served first, then screen order', () => {
    expect(allocateRows(20, blocks, 'agreements')).toEqual([10, 3, 1, 1])
    expect(allocateRows(24, blocks, 'agreements')).toEqual([10, 3, 2, 4])
    expect(allocateRows(20, blocks, 'audit')).toEqual([1, 1, 1, 12])
    expect(allocateRows(9, blocks, 'audit')).toEqual([1, 1, 1, 1])
    expect(allocateRows(8, blocks, 'audit')).toBeUndefined()
  })

  test('a window keeps the selection visible', () => {
    expect(windowStart(0, 5, 3)).toBe(0)
    expect(windowStart(10, 5, 50)).toBe(8)
    expect(windowStart(49, 5, 50)).toBe(45)
  })
})

describe('format', () => {
  test('cells are exactly their width and mark cuts', () => {
    expect(cell('chargeco', 5)).toBe('char…')
    expect(cell('up', 5)).toBe('up   ')
    expect(cell('42', 5, 'right')).toBe('   42')
    expect(truncate('abc', 0)).toBe('')
  })

  test('rates, spans and sparklines', () => {
    expect([0, 2.54, 250.4, 12_345, 4_100_000].map(formatRate)).toEqual(['0', '2.5', '250', '12k', '4.1M'])
    expect(formatRate(undefined)).toBe('–')
    expect([45_000, 192_000, 86_340_000, 446_400_000].map(formatSpan)).toEqual([
      '45s',
      '3m 12s',
      '23h 59m',
      '5d 4h',
    ])
    expect(sparkline([0, 1, 8], 5)).toBe('  ▁▂█')
    expect(sparkline([0, 0], 2)).toBe('▁▁')
  })

  test('wrapped text never exceeds its width', () => {
    const lines = wrapText(`${'word '.repeat(30)}${'x'.repeat(50)}`, 20, '  ')
    for (const line of lines) expect(line.length).toBeLessThanOrEqual(20)
    expect(lines.slice(1).every((line) => line.startsWith('  '))).toBe(true)
  })
})

describe('keys', () => {
  const data = snapshot()
  const lists = listsOf(data)
  const press = (state: UiState, input: string, key: Record<string, boolean> = {}) =>
    reduceKey(state, input, key, data, lists)

  test('q quits; tab and arrows move between panes and rows', () => {
    expect(press(initialUiState, 'q').effect).toEqual({ kind: 'quit' })
    expect(press(initialUiState, '', { tab: true }).state.focus).toBe('pending')
    expect(press(initialUiState, '', { tab: true, shift: true }).state.focus).toBe('audit')
    expect(press(initialUiState, '', { rightArrow: true }).state.focus).toBe('pending')
    expect(press(initialUiState, '', { downArrow: true }).state.selected.agreements).toBe(IDS.revoked)
  })

  test('signing needs the review screen: a on the list opens it, a on it signs', () => {
    const onPending = { ...initialUiState, focus: 'pending' as const }
    const opened = press(onPending, 'a')
    expect(opened.effect).toBeUndefined()
    expect(opened.state).toMatchObject({ screen: 'review', reviewId: IDS.pending })
    expect(press(opened.state, 'a').effect).toEqual({ kind: 'act', id: IDS.pending, action: 'accept' })
  })

  test('our own proposal cannot be accepted; r withdraws it after a y', () => {
    const review = { ...initialUiState, screen: 'review' as const, reviewId: IDS.ours }
    expect(press(review, 'a').state.message?.text).toMatch(/does not await your signature/)
    const asked = press(review, 'r').state
    expect(asked.confirm).toEqual({ action: 'reject', id: IDS.ours })
    expect(press(asked, 'y').effect).toEqual({ kind: 'act', id: IDS.ours, action: 'reject' })
  })

  test('any key but y cancels a confirmation, q included', () => {
    const asked = press(initialUiState, 'x').state
    expect(asked.confirm).toEqual({ action: 'revoke', id: IDS.active })
    for (const input of ['n', 'q', ' ']) {
      const result = press(asked, input)
      expect(result.effect).toBeUndefined()
      expect(result.state.confirm).toBeUndefined()
    }
  })

  test('nothing new starts while an action is in flight', () => {
    const busy = { ...initialUiState, busy: 'revoking aaaaaaaa' }
    expect(press(busy, 'x')).toEqual({ state: busy })
    expect(press(busy, 'q').effect).toEqual({ kind: 'quit' })
  })
})

describe('the audit pane', () => {
  const entry = (seq: number, type: string, data: Record<string, unknown>) => ({
    seq,
    ts: AT + seq * 1_000,
    type,
    data,
    prev: '0'.repeat(64),
    hash: '1'.repeat(64),
  })
  const receipt = (seq: number, id: string, first: number) =>
    entry(seq, 'transfer.received', {
      peer: 'chargeco',
      id,
      batches: [first, first + 9],
      records: 100,
      bytes: 9_000,
    })

  test('shows one receipt line per agreement, the newest, in a fixed place; other events stay in view', () => {
    const entries = [
      entry(1, 'peer.added', { peer: 'chargeco' }),
      entry(2, 'agreement.active', { peer: 'chargeco', id: IDS.active }),
      // A minute of receipts for two agreements: they would push everything else out.
      ...Array.from({ length: 120 }, (_, i) =>
        receipt(3 + i, i % 2 ? 'b'.repeat(64) : 'a'.repeat(64), i * 10),
      ),
      entry(200, 'connection.refused', { peerId: 'x' }),
    ]
    const audit = listsOf({ ...snapshot(), audit: entries }).audit
    expect(audit.map((e) => e.seq)).toEqual([121, 122, 200, 2, 1])
    expect(audit[0]!.data.id).toBe('a'.repeat(64))
    expect(audit[1]!.data.id).toBe('b'.repeat(64))
  })
})

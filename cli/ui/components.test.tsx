/**
 * The UI's screens rendered with ink-testing-library from fake node data: what a person at an
 * 80×24 terminal would read, and that it always fits there.
 */
import { cleanup, render } from 'ink-testing-library'
import { afterEach, describe, expect, test } from 'vitest'
import { describeGrant } from '../../federation/index.ts'
import { Banner, Header, Screen } from './components.tsx'
import { AT, IDS, PENDING_GRANTS, type SnapshotOptions, snapshot } from './fixtures.ts'
import { initialUiState, type NodeView, type UiState } from './model.ts'
import { nextView } from './use-node-data.ts'

afterEach(cleanup)

const SIZE = { columns: 80, rows: 24 }
const ANSI = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, 'g')
const plain = (frame: string | undefined): string => (frame ?? '').replace(ANSI, '')
const flat = (text: string): string => text.replace(/\s+/g, ' ')

/** A view after two polls one second apart: 1000 → 1500 records in, so 500 records/s. */
function liveView(options: SnapshotOptions = {}): NodeView {
  const first = nextView(
    { snapshot: undefined, rates: {}, unreachable: undefined },
    snapshot({ ...options, recordsIn: 1000 }),
  )
  return nextView(first, snapshot({ ...options, at: AT + 1000, recordsIn: 1500 }))
}

function frameOf(view: NodeView, state: Partial<UiState> = {}, size = SIZE): string {
  const { lastFrame, unmount } = render(
    <Screen view={view} state={{ ...initialUiState, ...state }} size={size} />,
  )
  const frame = plain(lastFrame())
  unmount()
  return frame
}

function expectFits(frame: string, size = SIZE): void {
  const lines = frame.split('\n')
  expect(lines.length).toBeLessThanOrEqual(size.rows)
  for (const line of lines) expect([...line].length, line).toBeLessThanOrEqual(size.columns)
}

describe('header', () => {
  test("names the node's org, peer id, uptime, NATS and listen state", () => {
    const { lastFrame } = render(<Header status={snapshot().status} width={80} />)
    const frame = plain(lastFrame())
    expect(frame).toContain('Gridco')
    expect(frame).toContain('peer 12D3KooW…ts8fKq')
    expect(frame).toContain('up 1h 2m 3s')
    expect(frame).toMatch(/NATS ● connected 127\.0\.0\.1:4222 embedded/)
    expect(frame).toMatch(/listen ● \/ip4\/10\.0\.0\.5\/tcp\/7400 \+1/)
  })

  test('says so when NATS is down and nothing listens', () => {
    const status = snapshot({ natsConnected: false, listening: false }).status
    const frame = plain(render(<Header status={status} width={80} />).lastFrame())
    expect(frame).toContain('● DISCONNECTED')
    expect(frame).toContain('● not listening')
  })

  test('before the first answer it says it is connecting', () => {
    expect(plain(render(<Header status={undefined} width={80} />).lastFrame())).toContain(
      'connecting to the node',
    )
  })
})

describe('dashboard panes', () => {
  const frame = frameOf(liveView({ drops: 7 }))

  test('agreements: role, state, time left, records/s in and out, drops and a sparkline', () => {
    expect(frame).toMatch(/id\s+peer\s+role\s+state\s+left\s+in\/s\s+out\/s\s+drops\s+rate/)
    expect(frame).toMatch(/▸ aaaaaaaa chargeco\s+consumer active\s+23h 59m\s+500\s+0\s+7 +[▁-█]+/)
    expect(frame).toMatch(/dddddddd flexco\s+consumer revoked\s+—/)
  })

  test('pending proposals: who it awaits and which way data would go', () => {
    expect(frame).toContain('Pending proposals (2) 1 awaits you')
    expect(frame).toMatch(/bbbbbbbb chargeco\s+awaits you\s+you receive 2 grants · site planning/)
    expect(frame).toMatch(/cccccccc flexco\s+awaits peer\s+you provide 1 grant · flexibility market/)
  })

  test('peers: org, state, RTT, last seen', () => {
    expect(frame).toMatch(/chargeco Chargeco\s+up\s+3ms 2s ago/)
    expect(frame).toMatch(/flexco\s+Flexco\s+down\s+–\s+never/)
  })

  test('plugins: state and connected devices', () => {
    expect(frame).toContain('Plugins (2) · connected devices')
    expect(frame).toMatch(/ocpp\s+running\s+2 stations/)
    expect(frame).toMatch(/simulator\s+failed\s+no sites config/)
  })

  test('recent audit events, newest first', () => {
    const lines = frame.split('\n')
    const title = lines.findIndex((line) => line.includes('Recent audit events'))
    expect(lines[title + 1]).toMatch(/11:59:59 peer\.added\s+chargeco aaaaaaaa/)
    expect(lines[title + 2]).toMatch(
      /11:59:58 transfer\.dropped\s+chargeco aaaaaaaa counts=\{"not_granted":2\}/,
    )
  })

  test('the first poll has no rate yet, and says so', () => {
    const once = nextView({ snapshot: undefined, rates: {}, unreachable: undefined }, snapshot())
    expect(frameOf(once)).toMatch(/aaaaaaaa chargeco\s+consumer active\s+1d\s+…\s+…/)
  })
})

describe('review screen', () => {
  test('shows a pending proposal with its grants in plain words and the keys to decide', () => {
    const frame = frameOf(liveView(), { screen: 'review', reviewId: IDS.pending, focus: 'pending' })
    expect(frame).toContain('Review proposal bbbbbbbb from chargeco (Chargeco) — awaits your signature')
    expect(frame).toContain('purpose    site planning with EVSE data')
    expect(frame).toContain('you        receive data: Chargeco provides it to Gridco (you are the consumer)')
    for (const grant of PENDING_GRANTS)
      expect(flat(frame)).toContain(describeGrant(grant, 'Chargeco', 'Gridco'))
    expect(frame).toContain('a accept & sign · r reject')
    expectFits(frame)
  })

  test('an active agreement shows its flow, limit and live sparkline, and offers revoke', () => {
    const frame = frameOf(liveView({ drops: 3 }), { screen: 'review', reviewId: IDS.active })
    expect(frame).toContain('Agreement aaaaaaaa with chargeco (Chargeco) active')
    expect(frame).toContain('rate limit at most 5000 records/s')
    expect(frame).toContain('records/s  in 500 · out 0 (total 1.5k in, 0 out)')
    expect(frame).toContain('drops      3: not_granted 3')
    expect(frame).toMatch(/rate\s+[▁-█]+/)
    expect(frame).toContain('x revoke')
    expect(frame).not.toContain('a accept')
  })

  test('our own proposal can only be withdrawn', () => {
    const frame = frameOf(liveView(), { screen: 'review', reviewId: IDS.ours })
    expect(frame).toContain('Your proposal cccccccc to flexco (Flexco) — awaits their signature')
    expect(frame).toContain('r withdraw')
  })
})

describe('confirmation and messages', () => {
  test('revoke asks y/n, naming the agreement and the peer', () => {
    const frame = frameOf(liveView(), { confirm: { action: 'revoke', id: IDS.active } })
    expect(frame.split('\n').at(-1)).toContain(
      'Revoke aaaaaaaa with chargeco now? Data stops on both nodes. y/n',
    )
  })

  test('reject asks y/n; for our own proposal it is a withdrawal', () => {
    expect(frameOf(liveView(), { confirm: { action: 'reject', id: IDS.pending } })).toContain(
      'Reject the proposal bbbbbbbb from chargeco? y/n',
    )
    expect(frameOf(liveView(), { confirm: { action: 'reject', id: IDS.ours } })).toContain(
      'Withdraw your proposal cccccccc to flexco? y/n',
    )
  })

  test('an action in flight and its outcome are shown in the footer', () => {
    expect(frameOf(liveView(), { busy: 'revoking aaaaaaaa' })).toContain('revoking aaaaaaaa…')
    expect(frameOf(liveView(), { message: { text: 'revoked aaaaaaaa: now revoked', tone: 'ok' } })).toContain(
      'revoked aaaaaaaa: now revoked',
    )
  })
})

describe('unreachable node', () => {
  const unreachable = { message: 'the node at http://127.0.0.1:7410 does not answer', since: AT, attempts: 3 }

  test('the banner says the node is unreachable and that it retries', () => {
    const frame = plain(
      render(<Banner unreachable={unreachable} lastContact={AT - 5000} now={AT} width={80} />).lastFrame(),
    )
    expect(frame).toContain('node unreachable — retrying')
    expect(frame).toContain('last contact 5s ago')
  })

  test('the last data stays on screen under the banner', () => {
    const frame = frameOf({ ...liveView(), unreachable })
    const lines = frame.split('\n')
    expect(lines[2]).toContain('node unreachable — retrying')
    expect(frame).toContain('aaaaaaaa chargeco')
    expectFits(frame)
  })

  test('with no data yet, the banner shows alone', () => {
    const frame = frameOf({ snapshot: undefined, rates: {}, unreachable })
    expect(frame).toContain('node unreachable — retrying')
    expect(frame).toContain('waiting for the node')
  })
})

describe('80×24', () => {
  const crowded = liveView({ extraAgreements: 30, extraPeers: 12, auditEntries: 50, drops: 12_345 })
  const cases: [string, NodeView, Partial<UiState>][] = [
    ['dashboard', liveView(), {}],
    ['crowded dashboard', crowded, {}],
    ['crowded, audit focused', crowded, { focus: 'audit' }],
    ['crowded, peers focused', crowded, { focus: 'peers' }],
    [
      'crowded, unreachable',
      { ...crowded, unreachable: { message: 'x'.repeat(200), since: AT, attempts: 9 } },
      { focus: 'pending' },
    ],
    ['review of a proposal', crowded, { screen: 'review', reviewId: IDS.pending }],
    ['review of an active agreement', crowded, { screen: 'review', reviewId: IDS.active }],
    ['review scrolled', crowded, { screen: 'review', reviewId: IDS.active, scroll: 100 }],
    ['help', crowded, { screen: 'help' }],
    ['confirmation', crowded, { confirm: { action: 'revoke', id: IDS.active } }],
    ['long message', crowded, { message: { text: 'y'.repeat(300), tone: 'error' } }],
  ]

  test.each(cases)('%s fits: at most 80 columns and 24 lines', (_name, view, state) => {
    const frame = frameOf(view, state)
    expectFits(frame)
    expect(frame.split('\n')[0]).toMatch(/^ oe-node {2}Gridco /)
  })

  test('a crowded pane scrolls to keep the selection visible and says where it is', () => {
    const frame = frameOf(crowded, { focus: 'agreements', selected: { agreements: '19'.padStart(64, 'e') } })
    expect(frame).toMatch(/Agreements \(\d+\/32\)/)
    expect(frame).toMatch(/▸ eeeeeeee chargeco\s+consumer expired/)
    expectFits(frame)
  })

  test('a terminal below 60×16 gets a message instead of a broken layout', () => {
    const frame = frameOf(crowded, {}, { columns: 50, rows: 12 })
    expect(frame).toContain('terminal too small: 50×12')
    expectFits(frame, { columns: 50, rows: 12 })
  })

  test('wider and taller terminals use the room', () => {
    const size = { columns: 120, rows: 40 }
    const frame = frameOf(crowded, {}, size)
    expectFits(frame, size)
    expect(frame.split('\n').length).toBeGreaterThan(24)
  })
})

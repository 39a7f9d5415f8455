/**
 * The app driven by keys, as a person would: ink-testing-library's stdin, a fake node that
 * records the actions it receives, and the frames that come back.
 */
import { cleanup, render } from 'ink-testing-library'
import { afterEach, describe, expect, test } from 'vitest'
import { App } from './app.tsx'
import { AT, IDS, snapshot } from './fixtures.ts'
import type { AgreementAction, UiSnapshot, UiSource } from './source.ts'

afterEach(cleanup)

const ANSI = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, 'g')
const KEYS = { tab: '\t', enter: '\r', down: '\u001B[B', up: '\u001B[A', backspace: '\u007F' }

/** A node behind the UI: counters grow 500 records per poll; actions change agreement states. */
class FakeNode implements UiSource {
  readonly actions: [string, AgreementAction][] = []
  down = false
  failAction: Error | undefined
  polls = 0
  private readonly states = new Map<string, string>()

  async snapshot(): Promise<UiSnapshot> {
    if (this.down) throw new Error('the node at http://127.0.0.1:7410 does not answer')
    this.polls += 1
    const base = snapshot({ at: AT + this.polls * 1000, recordsIn: 1000 + this.polls * 500 })
    for (const agreement of base.status.agreements) {
      const state = this.states.get(agreement.id)
      if (state) Object.assign(agreement, { state, awaitingUs: false })
    }
    return base
  }

  async act(id: string, action: AgreementAction): Promise<{ id: string; state: string }> {
    this.actions.push([id, action])
    if (this.failAction) throw this.failAction
    const state = { accept: 'active', reject: 'rejected', revoke: 'revoked' }[action]
    this.states.set(id, state)
    return { id, state }
  }
}

function start(node = new FakeNode()) {
  const app = render(<App source={node} intervalMs={30} size={{ columns: 80, rows: 24 }} />)
  const frame = (): string => (app.lastFrame() ?? '').replace(ANSI, '')
  const until = async (check: (frame: string) => boolean, what: string): Promise<string> => {
    const deadline = Date.now() + 3000
    while (Date.now() < deadline) {
      if (check(frame())) return frame()
      await Bun.sleep(10)
    }
    throw new Error(`timed out waiting for ${what}; the frame was:\n${frame()}`)
  }
  /** Type a key and let ink take it before the next one. */
  const press = async (...keys: string[]): Promise<void> => {
    for (const key of keys) {
      app.stdin.write(key)
      await Bun.sleep(20)
    }
  }
  return { app, node, frame, until, press }
}

describe('keyboard', () => {
  test('tab to the proposals, enter to review, a to accept: the node is asked once and the agreement shows active', async () => {
    const { node, until, press } = start()
    await until((frame) => /aaaaaaaa chargeco\s+consumer active\s+\S+( \S+)?\s+500/.test(frame), 'a rate')
    await press(KEYS.tab)
    await until((frame) => frame.includes('▶ Pending proposals'), 'focus on the pending pane')
    await press(KEYS.enter)
    await until((frame) => frame.includes('Review proposal bbbbbbbb'), 'the review screen')
    await press('a')
    await until((frame) => frame.includes('accepted bbbbbbbb: now active'), 'the outcome')
    expect(node.actions).toEqual([[IDS.pending, 'accept']])
    await until(
      (frame) => /▸ bbbbbbbb chargeco\s+consumer active/.test(frame) && frame.includes('▶ Agreements'),
      'the new agreement selected in the agreements pane',
    )
  })

  test('a on the proposals pane opens the review instead of signing unseen', async () => {
    const { node, until, press } = start()
    await until((frame) => frame.includes('bbbbbbbb'), 'the proposal')
    await press(KEYS.tab, 'a')
    await until((frame) => frame.includes('Review proposal bbbbbbbb'), 'the review screen')
    expect(node.actions).toEqual([])
  })

  test('x asks before revoking; n cancels, y revokes', async () => {
    const { node, until, press } = start()
    await until((frame) => frame.includes('▸ aaaaaaaa'), 'the active agreement selected')
    await press('x')
    await until((frame) => frame.includes('Revoke aaaaaaaa with chargeco now?'), 'the confirmation')
    await press('n')
    await until((frame) => frame.includes('revoke cancelled'), 'the cancellation')
    expect(node.actions).toEqual([])
    await press('x', 'y')
    await until((frame) => frame.includes('revoked aaaaaaaa: now revoked'), 'the outcome')
    expect(node.actions).toEqual([[IDS.active, 'revoke']])
  })

  test('x on an agreement that is no longer live explains instead of asking', async () => {
    const { node, until, press } = start()
    await until((frame) => frame.includes('dddddddd'), 'the revoked agreement')
    await press(KEYS.down, 'x')
    await until(
      (frame) => frame.includes('only an active or accepted agreement can be revoked'),
      'the reason',
    )
    expect(node.actions).toEqual([])
  })

  test('r on the review screen asks, then rejects', async () => {
    const { node, until, press } = start()
    await until((frame) => frame.includes('bbbbbbbb'), 'the proposal')
    await press(KEYS.tab, KEYS.enter, 'r')
    await until(
      (frame) => frame.includes('Reject the proposal bbbbbbbb from chargeco? y/n'),
      'the confirmation',
    )
    await press('y')
    await until((frame) => frame.includes('rejected bbbbbbbb: now rejected'), 'the outcome')
    expect(node.actions).toEqual([[IDS.pending, 'reject']])
  })

  test('a failed action is shown, and the screen stays usable', async () => {
    const node = new FakeNode()
    node.failAction = new Error('POST /v1/agreements/…/accept: 409 AgreementStateError: already rejected')
    const { until, press } = start(node)
    await until((frame) => frame.includes('bbbbbbbb'), 'the proposal')
    await press(KEYS.tab, KEYS.enter, 'a')
    await until((frame) => frame.includes('accept failed: POST'), 'the error')
    await press(KEYS.backspace)
    await until((frame) => frame.includes('▶ Pending proposals'), 'the dashboard again')
  })

  test('? shows the keys; any key closes it', async () => {
    const { until, press } = start()
    await until((frame) => frame.includes('aaaaaaaa'), 'data')
    await press('?')
    const help = await until((frame) => frame.includes('▶ Keys'), 'help')
    expect(help).toMatch(/x\s+revoke the selected agreement now/)
    await press(' ')
    await until((frame) => frame.includes('▶ Agreements'), 'the dashboard')
  })

  test('the unreachable banner comes when the node goes and leaves when it is back', async () => {
    const { node, until } = start()
    await until((frame) => frame.includes('aaaaaaaa'), 'data')
    node.down = true
    const down = await until((frame) => frame.includes('node unreachable — retrying'), 'the banner')
    expect(down).toContain('aaaaaaaa chargeco') // the last data stays
    node.down = false
    await until((frame) => !frame.includes('node unreachable'), 'the banner to go')
  })

  test('q quits: the app unmounts and stops asking the node', async () => {
    const { node, until, press } = start()
    await until((frame) => frame.includes('aaaaaaaa'), 'data')
    await press('q')
    const polls = node.polls
    await Bun.sleep(200)
    expect(node.polls).toBe(polls)
  })
})

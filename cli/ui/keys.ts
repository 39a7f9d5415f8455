/**
 * Keyboard handling as a pure function: a key and the current state give the next state and,
 * at most, one effect for the app to carry out (an action on the node, or quitting).
 *
 * Signing is never one key away from the list: `a` and `r` on a pending proposal open its
 * review screen first, so its grants are read in plain words before anything is signed.
 */
import type { Key } from 'ink'
import { shortId } from './format.ts'
import {
  keyOf,
  type Lists,
  PANES,
  type PaneId,
  paneShown,
  reviewed,
  selectedIndex,
  selectedItem,
  type UiState,
} from './model.ts'
import type { AgreementAction, UiSnapshot } from './source.ts'

export type Effect = { kind: 'quit' } | { kind: 'act'; id: string; action: AgreementAction }

export interface KeyResult {
  state: UiState
  effect?: Effect
}

/** The keys the help screen lists, in order. */
export const KEY_HELP: readonly [string, string][] = [
  ['tab  → / shift-tab ←', 'next / previous pane'],
  ['↑ ↓  pgup pgdn', 'move the selection (scroll on the review screen)'],
  ['enter', 'review the selected proposal or agreement; details of the selected plugin'],
  ['a', 'accept (countersign) the proposal under review'],
  ['r', 'reject the proposal under review (or withdraw your own); asks y/n'],
  ['x', 'revoke the selected agreement now, on both nodes; asks y/n'],
  ['esc  backspace', 'back to the dashboard'],
  ['?', 'this help (any key closes it)'],
  ['q  ctrl-c', 'quit'],
]

const REVOCABLE = new Set(['active', 'accepted'])

function move(state: UiState, lists: Lists, pane: PaneId, delta: number): UiState {
  const items = lists[pane] as unknown[]
  if (items.length === 0) return state
  const index = Math.max(0, Math.min(items.length - 1, selectedIndex(state, lists, pane) + delta))
  return { ...state, selected: { ...state.selected, [pane]: keyOf(pane, items[index]) } }
}

function cyclePane(state: UiState, delta: number, lists: Lists): UiState {
  const shown = PANES.filter((pane) => paneShown(pane, lists) || pane === state.focus)
  const index = shown.indexOf(state.focus)
  const focus = shown[(index + delta + shown.length) % shown.length]!
  return { ...state, focus }
}

const say = (state: UiState, text: string, tone: 'ok' | 'error' = 'error'): KeyResult => ({
  state: { ...state, message: { text, tone } },
})

function askRevoke(state: UiState, id: string, agreementState: string): KeyResult {
  if (!REVOCABLE.has(agreementState))
    return say(
      state,
      `only an active or accepted agreement can be revoked (${shortId(id)} is ${agreementState})`,
    )
  return { state: { ...state, confirm: { action: 'revoke', id } } }
}

export function reduceKey(
  state: UiState,
  input: string,
  key: Partial<Key>,
  snapshot: UiSnapshot | undefined,
  lists: Lists,
): KeyResult {
  // A confirmation takes the next key: y goes ahead, anything else cancels.
  if (state.confirm) {
    const { confirm } = state
    const next = { ...state, confirm: undefined }
    if (input === 'y' || input === 'Y') return { state: next, effect: { kind: 'act', ...confirm } }
    return say(next, `${confirm.action} cancelled`, 'ok')
  }
  if (input === 'q' && !key.ctrl) return { state, effect: { kind: 'quit' } }
  if (state.screen === 'help') return { state: { ...state, screen: state.behindHelp } }
  if (input === '?') return { state: { ...state, screen: 'help', behindHelp: state.screen } }
  // One action at a time; the screen says what is in flight.
  if (state.busy) return { state }
  const cleared: UiState = { ...state, message: undefined }

  if (state.screen === 'plugin') {
    if (key.escape || key.backspace || key.delete || key.leftArrow || input === 'b')
      return { state: { ...cleared, screen: 'dashboard', scroll: 0 } }
    if (key.upArrow) return { state: { ...cleared, scroll: Math.max(0, state.scroll - 1) } }
    if (key.downArrow) return { state: { ...cleared, scroll: state.scroll + 1 } }
    if (key.pageUp) return { state: { ...cleared, scroll: Math.max(0, state.scroll - 10) } }
    if (key.pageDown) return { state: { ...cleared, scroll: state.scroll + 10 } }
    return { state }
  }

  if (state.screen === 'review') {
    const agreement = reviewed(state, snapshot)
    if (key.escape || key.backspace || key.delete || key.leftArrow || input === 'b')
      return { state: { ...cleared, screen: 'dashboard', scroll: 0 } }
    if (key.upArrow) return { state: { ...cleared, scroll: Math.max(0, state.scroll - 1) } }
    if (key.downArrow) return { state: { ...cleared, scroll: state.scroll + 1 } }
    if (key.pageUp) return { state: { ...cleared, scroll: Math.max(0, state.scroll - 10) } }
    if (key.pageDown) return { state: { ...cleared, scroll: state.scroll + 10 } }
    if (!agreement) return { state: cleared }
    if (input === 'a') {
      if (agreement.state === 'proposed' && agreement.awaitingUs)
        return { state: cleared, effect: { kind: 'act', id: agreement.id, action: 'accept' } }
      return say(cleared, `${shortId(agreement.id)} does not await your signature (it is ${agreement.state})`)
    }
    if (input === 'r') {
      if (agreement.state === 'proposed')
        return { state: { ...cleared, confirm: { action: 'reject', id: agreement.id } } }
      return say(cleared, `only a proposal can be rejected (${shortId(agreement.id)} is ${agreement.state})`)
    }
    if (input === 'x') return askRevoke(cleared, agreement.id, agreement.state)
    return { state }
  }

  if (key.tab) return { state: cyclePane(cleared, key.shift ? -1 : 1, lists) }
  if (key.rightArrow) return { state: cyclePane(cleared, 1, lists) }
  if (key.leftArrow) return { state: cyclePane(cleared, -1, lists) }
  if (key.upArrow) return { state: move(cleared, lists, state.focus, -1) }
  if (key.downArrow) return { state: move(cleared, lists, state.focus, 1) }
  if (key.pageUp) return { state: move(cleared, lists, state.focus, -10) }
  if (key.pageDown) return { state: move(cleared, lists, state.focus, 10) }
  if (key.home) return { state: move(cleared, lists, state.focus, -Infinity) }
  if (key.end) return { state: move(cleared, lists, state.focus, Infinity) }

  const pane = state.focus
  if (pane === 'plugins' && key.return) {
    const plugin = selectedItem(state, lists, 'plugins')
    if (!plugin) return say(cleared, 'no plugin enabled')
    return {
      state: {
        ...cleared,
        screen: 'plugin',
        pluginId: plugin.id,
        scroll: 0,
        selected: { ...state.selected, plugins: plugin.id },
      },
    }
  }
  if (pane !== 'agreements' && pane !== 'pending') return { state }
  const agreement = selectedItem(state, lists, pane)
  if (key.return || ((input === 'a' || input === 'r') && pane === 'pending')) {
    if (!agreement)
      return say(cleared, pane === 'pending' ? 'no proposal to review' : 'no agreement selected')
    return {
      state: {
        ...cleared,
        screen: 'review',
        reviewId: agreement.id,
        scroll: 0,
        selected: { ...state.selected, [pane]: agreement.id },
      },
    }
  }
  if (input === 'x') {
    if (!agreement) return say(cleared, 'no agreement selected')
    return askRevoke(cleared, agreement.id, agreement.state)
  }
  return { state }
}

/** The question a confirmation asks, in words. */
export function confirmQuestion(state: UiState, snapshot: UiSnapshot | undefined): string | undefined {
  const { confirm } = state
  if (!confirm) return undefined
  const agreement = snapshot?.status.agreements.find((candidate) => candidate.id === confirm.id)
  const peer = agreement?.peer ?? 'the peer'
  if (confirm.action === 'revoke')
    return `Revoke ${shortId(confirm.id)} with ${peer} now? Data stops on both nodes. y/n`
  if (agreement && !agreement.awaitingUs)
    return `Withdraw your proposal ${shortId(confirm.id)} to ${peer}? y/n`
  return `Reject the proposal ${shortId(confirm.id)} from ${peer}? y/n`
}

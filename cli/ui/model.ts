/**
 * The UI's state and the lists it shows, derived from one snapshot. Pure: the screen is a
 * function of (snapshot, rates, UI state, size).
 */
import type { AgreementSummary, AuditEntry, PeerView } from '../../federation/index.ts'
import type { NodeStatus } from '../../node/index.ts'
import type { RateTable } from './rates.ts'
import type { AgreementAction, UiSnapshot } from './source.ts'

export type PaneId = 'agreements' | 'pending' | 'peers' | 'plugins' | 'replicas' | 'audit'
export type PluginView = NodeStatus['plugins'][number]
export type ReplicaItem = NodeStatus['replicas'][number]

/** Tab order. */
export const PANES: readonly PaneId[] = ['agreements', 'pending', 'peers', 'plugins', 'replicas', 'audit']

/** Whether a pane is on screen: the replicas pane only for a node that has several. */
export function paneShown(pane: PaneId, lists: Lists): boolean {
  return pane !== 'replicas' || lists.replicas.length > 1
}

export interface Unreachable {
  message: string
  /** When the first failed poll in a row ended (epoch ms). */
  since: number
  attempts: number
}

/** What the data hook knows about the node. */
export interface NodeView {
  snapshot: UiSnapshot | undefined
  rates: RateTable
  unreachable: Unreachable | undefined
}

export interface Confirmation {
  action: Extract<AgreementAction, 'reject' | 'revoke'>
  id: string
}

export interface UiState {
  screen: 'dashboard' | 'review' | 'plugin' | 'help'
  /** The screen help returns to. */
  behindHelp: 'dashboard' | 'review' | 'plugin'
  focus: PaneId
  /** Selected item per pane, by key (agreement id, alias, plugin id, audit seq). */
  selected: Partial<Record<PaneId, string>>
  reviewId?: string
  /** The plugin on the plugin screen. */
  pluginId?: string
  /** First body line shown on the review or plugin screen. */
  scroll: number
  confirm?: Confirmation
  /** An action in flight, said in words. */
  busy?: string
  message?: { text: string; tone: 'ok' | 'error' }
}

export const initialUiState: UiState = {
  screen: 'dashboard',
  behindHelp: 'dashboard',
  focus: 'agreements',
  selected: {},
  scroll: 0,
}

export interface PaneItem {
  key: string
}

/** The items of every pane, in display order. */
export interface Lists {
  agreements: AgreementSummary[]
  pending: AgreementSummary[]
  peers: PeerView[]
  plugins: PluginView[]
  replicas: ReplicaItem[]
  audit: AuditEntry[]
}

const STATE_ORDER: Record<string, number> = { active: 0, accepted: 1, expired: 2, revoked: 3, rejected: 4 }

export function listsOf(snapshot: UiSnapshot | undefined): Lists {
  if (!snapshot) return { agreements: [], pending: [], peers: [], plugins: [], replicas: [], audit: [] }
  const { agreements, peers, plugins } = snapshot.status
  const signed = agreements
    .map((agreement, index) => ({ agreement, index }))
    .filter(({ agreement }) => agreement.state !== 'proposed')
    .sort(
      (a, b) =>
        (STATE_ORDER[a.agreement.state] ?? 9) - (STATE_ORDER[b.agreement.state] ?? 9) || b.index - a.index,
    )
    .map(({ agreement }) => agreement)
  const pending = agreements
    .filter((agreement) => agreement.state === 'proposed')
    .sort((a, b) => Number(b.awaitingUs) - Number(a.awaitingUs))
  return {
    agreements: signed,
    pending,
    peers,
    plugins,
    // A node from before replicas reports none.
    replicas: snapshot.status.replicas ?? [],
    audit: collapseReceipts(snapshot.audit),
  }
}

export const RECEIPT_TYPE = 'transfer.received'
/** Other audit events the pane lists, newest first, after the receipt lines. */
const AUDIT_EVENTS_SHOWN = 50

/**
 * The audit pane's items: one line per agreement for its transfer receipts (the newest, in a
 * fixed order so each line updates in place as receipts come every second), then the other
 * events, newest first. The log itself keeps every receipt.
 */
export function collapseReceipts(entries: readonly AuditEntry[]): AuditEntry[] {
  const receipts = new Map<string, AuditEntry>()
  const events: AuditEntry[] = []
  for (let i = entries.length - 1; i >= 0; i--) {
    const entry = entries[i]!
    if (entry.type !== RECEIPT_TYPE) {
      if (events.length < AUDIT_EVENTS_SHOWN) events.push(entry)
      continue
    }
    const id = String(entry.data.id ?? '')
    if (!receipts.has(id)) receipts.set(id, entry)
  }
  const lines = [...receipts.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([, entry]) => entry)
  return [...lines, ...events]
}

export function keyOf(pane: PaneId, item: unknown): string {
  switch (pane) {
    case 'agreements':
    case 'pending':
      return (item as AgreementSummary).id
    case 'peers':
      return (item as PeerView).alias
    case 'plugins':
      return (item as PluginView).id
    case 'replicas':
      return (item as ReplicaItem).id
    case 'audit': {
      // A receipt line keeps its key (its agreement) as newer receipts replace it.
      const entry = item as AuditEntry
      return entry.type === RECEIPT_TYPE ? `receipts-${String(entry.data.id)}` : String(entry.seq)
    }
  }
}

/** Index of the selected item in its pane (the first one when nothing or a vanished one is selected). */
export function selectedIndex(state: UiState, lists: Lists, pane: PaneId): number {
  const items = lists[pane] as unknown[]
  const key = state.selected[pane]
  if (key === undefined) return 0
  const index = items.findIndex((item) => keyOf(pane, item) === key)
  return index === -1 ? 0 : index
}

export function selectedItem<P extends PaneId>(
  state: UiState,
  lists: Lists,
  pane: P,
): Lists[P][number] | undefined {
  return (lists[pane] as Lists[P][number][])[selectedIndex(state, lists, pane)]
}

/** The agreement shown on the review screen. */
export function reviewed(state: UiState, snapshot: UiSnapshot | undefined): AgreementSummary | undefined {
  if (!state.reviewId || !snapshot) return undefined
  return snapshot.status.agreements.find((agreement) => agreement.id === state.reviewId)
}

/**
 * The screens of `oe-node ui`. Every line is built as fixed-width text first (so the layout
 * can promise it fits the terminal), then drawn with ink, one `<Text>` per coloured segment.
 */
import { Box, Text } from 'ink'
import type { AgreementDetail, AgreementSummary, AuditEntry, PeerView } from '../../federation/index.ts'
import { describeGrant } from '../../federation/index.ts'
import type { NodeStatus } from '../../node/index.ts'
import { formatDuration } from '../output.ts'
import {
  cell,
  clockTime,
  formatAgo,
  formatCount,
  formatRate,
  formatRtt,
  formatSpan,
  shortDate,
  shortId,
  shortPeerId,
  sparkline,
  textWidth,
  wrapText,
} from './format.ts'
import { confirmQuestion, KEY_HELP } from './keys.ts'
import { allocateRows, type Block, MIN_SIZE, paneRows, type Size, windowStart } from './layout.ts'
import {
  keyOf,
  type Lists,
  listsOf,
  type NodeView,
  type PaneId,
  type PluginView,
  paneShown,
  RECEIPT_TYPE,
  reviewed,
  selectedIndex,
  type UiState,
  type Unreachable,
} from './model.ts'
import { pluginDetailLines, pluginSummary } from './plugin-detail.ts'
import { type AgreementRate, sumDrops } from './rates.ts'
import { leasesOf, shortLeaseName } from './replicas.ts'
import type { UiSnapshot } from './source.ts'

// ---- lines -------------------------------------------------------------------------------------

export interface Segment {
  text: string
  color?: string
  bold?: boolean
  dim?: boolean
  inverse?: boolean
}

export interface LineSpec {
  key: string
  segments: Segment[]
}

const seg = (text: string, style: Omit<Segment, 'text'> = {}): Segment => ({ text, ...style })
const line = (key: string, ...segments: Segment[]): LineSpec => ({ key, segments })

/** Cut segments so their text fits `width` columns (cells mark their own cuts with `…`). */
function fitSegments(segments: readonly Segment[], width: number): (Segment & { key: number })[] {
  const fitted: (Segment & { key: number })[] = []
  let used = 0
  for (const segment of segments) {
    if (used >= width) break
    if (segment.text === '') continue
    const chars = [...segment.text]
    const text = chars.length > width - used ? chars.slice(0, width - used).join('') : segment.text
    fitted.push({ ...segment, text, key: fitted.length })
    used += textWidth(text)
  }
  return fitted
}

export function Line({ spec, width }: { spec: LineSpec; width: number }) {
  return (
    <Box width={width} height={1} overflow="hidden">
      <Text wrap="truncate-end">
        {fitSegments(spec.segments, width).map((segment) => (
          <Text
            key={segment.key}
            {...(segment.color ? { color: segment.color } : {})}
            bold={segment.bold ?? false}
            dimColor={segment.dim ?? false}
            inverse={segment.inverse ?? false}
          >
            {segment.text}
          </Text>
        ))}
      </Text>
    </Box>
  )
}

export function Lines({ lines, width }: { lines: readonly LineSpec[]; width: number }) {
  return (
    <Box flexDirection="column" width={width}>
      {lines.map((spec) => (
        <Line key={spec.key} spec={spec} width={width} />
      ))}
    </Box>
  )
}

// ---- header and banner -------------------------------------------------------------------------

export function headerLines(status: NodeStatus | undefined, width: number): LineSpec[] {
  const brand = seg(' oe-node ', { inverse: true, bold: true })
  if (!status) return [line('h1', brand, seg('  connecting to the node…', { dim: true })), line('h2')]
  const listening = status.addrs.map((addr) => addr.replace(/\/p2p\/[^/]+$/, ''))
  const nats = status.nats
  const listen =
    listening.length > 0
      ? [
          seg(`● ${listening[0]}`, { color: 'green' }),
          seg(listening.length > 1 ? ` +${listening.length - 1}` : ''),
        ]
      : [seg('● not listening', { color: 'red', bold: true })]
  const natsState = nats.connected
    ? seg('● connected', { color: 'green' })
    : seg('● DISCONNECTED', { color: 'red', bold: true })
  const listenWidth = listen.reduce((total, segment) => total + textWidth(segment.text), 0)
  const natsWhere = `${nats.url.replace(/^nats:\/\//, '')} ${nats.embedded ? 'embedded' : 'external'}`
  const natsRoom = width - 6 - textWidth(natsState.text) - 1 - 10 - listenWidth
  return [
    line(
      'h1',
      brand,
      seg(` ${status.org} `, { bold: true }),
      seg(` peer ${shortPeerId(status.peerId)}`),
      seg(` · up ${formatDuration(status.uptimeS)}`),
      seg(` · v${status.version}`, { dim: true }),
    ),
    line(
      'h2',
      seg(' NATS '),
      natsState,
      seg(` ${truncateMiddle(natsWhere, Math.max(8, natsRoom))}`, { dim: true }),
      seg(' · listen '),
      ...listen,
    ),
  ]
}

function truncateMiddle(text: string, width: number): string {
  const chars = [...text]
  if (chars.length <= width) return text
  const head = Math.ceil((width - 1) / 2)
  return `${chars.slice(0, head).join('')}…${chars.slice(chars.length - (width - 1 - head)).join('')}`
}

export function Header({ status, width }: { status: NodeStatus | undefined; width: number }) {
  return <Lines lines={headerLines(status, width)} width={width} />
}

export const UNREACHABLE_TEXT = 'node unreachable — retrying'

export function bannerLine(unreachable: Unreachable, lastContact: number | undefined, now: number): LineSpec {
  const contact = lastContact === undefined ? '' : ` last contact ${formatAgo(lastContact, now)} ·`
  return line(
    'banner',
    seg(` ${UNREACHABLE_TEXT} `, { color: 'red', inverse: true, bold: true }),
    seg(`${contact} ${unreachable.message}`, { color: 'red' }),
  )
}

export function Banner(props: {
  unreachable: Unreachable
  lastContact: number | undefined
  now: number
  width: number
}) {
  return <Line spec={bannerLine(props.unreachable, props.lastContact, props.now)} width={props.width} />
}

// ---- panes -------------------------------------------------------------------------------------

function titleLine(key: string, title: string, extra: Segment[], focused: boolean, width: number): LineSpec {
  const marker = focused ? '▶ ' : '  '
  const head = [seg(marker + title, { bold: true, ...(focused ? { color: 'cyan' } : {}) }), ...extra]
  const used = head.reduce((total, segment) => total + textWidth(segment.text), 0)
  return line(key, ...head, seg(` ${'─'.repeat(Math.max(0, width - used - 1))}`, { dim: true }))
}

function countText(selected: number, shown: number, total: number): string {
  return total > shown ? ` (${selected + 1}/${total})` : ` (${total})`
}

interface PaneProps {
  lists: Lists
  state: UiState
  rows: number
  width: number
}

/** The window of a pane's items and whether each is the highlighted one. */
function visible<T>(
  items: readonly T[],
  pane: PaneId,
  props: PaneProps,
): { item: T; selected: boolean; index: number }[] {
  const selected = selectedIndex(props.state, props.lists, pane)
  const start = windowStart(selected, props.rows, items.length)
  return items.slice(start, start + props.rows).map((item, offset) => ({
    item,
    index: start + offset,
    selected: props.state.focus === pane && start + offset === selected,
  }))
}

const rowStyle = (selected: boolean): Omit<Segment, 'text'> => (selected ? { inverse: true } : {})
const marker = (selected: boolean): Segment => seg(selected ? '▸ ' : '  ', selected ? { color: 'cyan' } : {})

const STATE_COLORS: Record<string, string> = {
  active: 'green',
  accepted: 'cyan',
  proposed: 'yellow',
  expired: 'gray',
  revoked: 'gray',
  rejected: 'gray',
}

/** `23h 59m`, `in 2h` (not yet valid), or `—` once it ended. */
export function timeLeft(agreement: AgreementSummary, now: number): string {
  if (!['proposed', 'accepted', 'active'].includes(agreement.state)) return '—'
  const from = Date.parse(agreement.validFrom)
  if (from > now) return `in ${formatSpan(from - now)}`
  return formatSpan(Date.parse(agreement.validUntil) - now)
}

const AGREEMENT_FIXED = 2 + 9 + 10 + 9 + 9 + 9 + 7 + 7 + 6

export function agreementLines(
  props: PaneProps & { details: Record<string, AgreementDetail>; rates: Record<string, AgreementRate> },
  now: number,
  waiting: boolean,
): LineSpec[] {
  const { lists, width } = props
  const items = lists.agreements
  const shown = visible(items, 'agreements', props)
  const selected = selectedIndex(props.state, lists, 'agreements')
  const sparkWidth = Math.max(0, width - AGREEMENT_FIXED)
  const lines = [
    titleLine(
      'agreements-title',
      'Agreements',
      [seg(countText(selected, props.rows, items.length), { dim: true })],
      props.state.focus === 'agreements',
      width,
    ),
    line(
      'agreements-columns',
      seg(
        cell('', 2) +
          cell('id', 9) +
          cell('peer', 10) +
          cell('role', 9) +
          cell('state', 9) +
          cell('left', 9) +
          cell('in/s', 6, 'right') +
          cell('out/s', 7, 'right') +
          cell('drops', 6, 'right') +
          (sparkWidth > 0 ? cell(' rate', sparkWidth) : ''),
        { dim: true },
      ),
    ),
  ]
  if (items.length === 0) {
    lines.push(
      line(
        'agreements-none',
        seg(waiting ? '  waiting for the node…' : '  no signed agreements yet', { dim: true }),
      ),
    )
    return lines
  }
  for (const { item, selected: isSelected } of shown) {
    const rate = props.rates[item.id]
    const detail = props.details[item.id]
    const style = rowStyle(isSelected)
    const ended = !['accepted', 'active'].includes(item.state)
    const drops = detail ? sumDrops(detail.flow.drops) : 0
    // No detail: nothing flows under it. No value yet: one poll seen, the rate needs two.
    const rateText = (value: number | undefined) =>
      detail ? (value === undefined ? '…' : formatRate(value)) : ''
    lines.push(
      line(
        `agreement-${item.id}`,
        marker(isSelected),
        seg(cell(shortId(item.id), 9), style),
        seg(cell(item.peer, 10), style),
        seg(cell(item.role, 9), style),
        seg(cell(item.state, 9), { ...style, color: STATE_COLORS[item.state] ?? 'white' }),
        seg(cell(timeLeft(item, now), 9), { ...style, ...(ended ? { dim: true } : {}) }),
        seg(cell(rateText(rate?.inPerSec), 6, 'right'), style),
        seg(cell(rateText(rate?.outPerSec), 7, 'right'), style),
        seg(cell(detail ? formatCount(drops) : '', 6, 'right'), {
          ...style,
          ...(drops > 0 ? { color: 'red' } : {}),
        }),
        seg(sparkWidth > 1 ? ` ${sparkline(rate?.history ?? [], sparkWidth - 1)}` : '', { color: 'green' }),
      ),
    )
  }
  return lines
}

export function pendingLines(props: PaneProps, waiting: boolean): LineSpec[] {
  const { lists, width } = props
  const items = lists.pending
  const selected = selectedIndex(props.state, lists, 'pending')
  const awaiting = items.filter((item) => item.awaitingUs).length
  const lines = [
    titleLine(
      'pending-title',
      'Pending proposals',
      [
        seg(countText(selected, props.rows, items.length), { dim: true }),
        seg(awaiting > 0 ? ` ${awaiting} await${awaiting === 1 ? 's' : ''} you — enter to review` : '', {
          color: 'yellow',
          bold: true,
        }),
      ],
      props.state.focus === 'pending',
      width,
    ),
  ]
  if (items.length === 0) {
    lines.push(line('pending-none', seg(waiting ? '  …' : '  none', { dim: true })))
    return lines
  }
  for (const { item, selected: isSelected } of visible(items, 'pending', props)) {
    const style = rowStyle(isSelected)
    lines.push(
      line(
        `pending-${item.id}`,
        marker(isSelected),
        seg(cell(shortId(item.id), 9), style),
        seg(cell(item.peer, 10), style),
        item.awaitingUs
          ? seg(cell('awaits you', 12), { ...style, color: 'yellow', bold: true })
          : seg(cell('awaits peer', 12), { ...style, dim: true }),
        seg(cell(item.role === 'consumer' ? 'you receive' : 'you provide', 12), style),
        seg(
          cell(
            `${item.grants.length} grant${item.grants.length === 1 ? '' : 's'} · ${item.purpose}`,
            Math.max(0, width - 45),
          ),
          { ...style, dim: !isSelected },
        ),
      ),
    )
  }
  return lines
}

const PEER_STATES: Record<string, [string, string]> = {
  connected: ['up', 'green'],
  connecting: ['dial', 'yellow'],
  disconnected: ['down', 'red'],
}

export function peerLines(props: PaneProps, now: number): LineSpec[] {
  const { lists, width } = props
  const items: readonly PeerView[] = lists.peers
  const selected = selectedIndex(props.state, lists, 'peers')
  const lines = [
    titleLine(
      'peers-title',
      'Peers',
      [seg(countText(selected, props.rows, items.length), { dim: true })],
      props.state.focus === 'peers',
      width,
    ),
  ]
  if (items.length === 0) lines.push(line('peers-none', seg('  none (oe-node peers add)', { dim: true })))
  for (const { item, selected: isSelected } of visible(items, 'peers', props)) {
    const style = rowStyle(isSelected)
    const [word, color] = PEER_STATES[item.state] ?? [item.state, 'white']
    lines.push(
      line(
        `peer-${item.alias}`,
        marker(isSelected),
        seg(cell(item.alias, 9), style),
        seg(cell(item.org, 11), { ...style, bold: true }),
        seg(cell(word, 5), { ...style, color }),
        seg(cell(formatRtt(item.rttMs), 6, 'right'), style),
        seg(` ${cell(formatAgo(item.lastSeen, now), Math.max(0, width - 34))}`, {
          ...style,
          dim: !isSelected,
        }),
      ),
    )
  }
  return lines
}

/** Connected devices a plugin reports (`2 stations`), if it reports any. */
export function pluginDevices(plugin: PluginView): string {
  const summary = pluginSummary(plugin)
  if (summary) return summary
  if (typeof plugin.devices === 'number') return `${plugin.devices} devices`
  if (typeof plugin.connected === 'number') return `${plugin.connected} devices`
  for (const [name, value] of Object.entries(plugin)) {
    if (
      value &&
      typeof value === 'object' &&
      typeof (value as { connected?: unknown }).connected === 'number'
    ) {
      return `${(value as { connected: number }).connected} ${name}`
    }
  }
  return '—'
}

const PLUGIN_COLORS: Record<string, string> = {
  running: 'green',
  starting: 'yellow',
  stopped: 'gray',
  failed: 'red',
}

export function pluginLines(props: PaneProps): LineSpec[] {
  const { lists, width } = props
  const items = lists.plugins
  const selected = selectedIndex(props.state, lists, 'plugins')
  const lines = [
    titleLine(
      'plugins-title',
      'Plugins',
      [seg(`${countText(selected, props.rows, items.length)} · connected devices`, { dim: true })],
      props.state.focus === 'plugins',
      width,
    ),
  ]
  if (items.length === 0) lines.push(line('plugins-none', seg('  none enabled', { dim: true })))
  for (const { item, selected: isSelected } of visible(items, 'plugins', props)) {
    const style = rowStyle(isSelected)
    const state = item.state === 'running' && !item.ready ? 'starting' : item.state
    lines.push(
      line(
        `plugin-${item.id}`,
        marker(isSelected),
        seg(cell(item.id, 12), style),
        seg(cell(state, 9), { ...style, color: PLUGIN_COLORS[state] ?? 'white' }),
        item.error
          ? seg(cell(item.error, Math.max(0, width - 23)), { ...style, color: 'red' })
          : seg(cell(pluginDevices(item), Math.max(0, width - 23)), style),
      ),
    )
  }
  return lines
}

const REPLICA_COLORS: Record<string, string> = { this: 'cyan', up: 'green', stale: 'yellow' }

/**
 * The replicas of the node (shown when it has several): each one's heartbeat age and the leases
 * it holds, i.e. which replica runs which single-owner work.
 */
export function replicaLines(props: PaneProps & { status: NodeStatus | undefined }): LineSpec[] {
  const { lists, width } = props
  const items = lists.replicas
  const selected = selectedIndex(props.state, lists, 'replicas')
  const leases = props.status?.leases ?? []
  const lines = [
    titleLine(
      'replicas-title',
      'Replicas',
      [seg(`${countText(selected, props.rows, items.length)} · ${leases.length} leases`, { dim: true })],
      props.state.focus === 'replicas',
      width,
    ),
  ]
  for (const { item, selected: isSelected } of visible(items, 'replicas', props)) {
    const style = rowStyle(isSelected)
    const state = item.stale ? 'stale' : item.self ? 'this' : 'up'
    const held = props.status ? leasesOf(props.status, item.id) : []
    const owns =
      held.length === 0
        ? 'no leases'
        : `${held.length} · ${held
            .slice(0, 3)
            .map((lease) => `${shortLeaseName(lease.name)} ${formatSpan(lease.heldMs)}`)
            .join(', ')}`
    lines.push(
      line(
        `replica-${item.id}`,
        marker(isSelected),
        seg(cell(item.id, 16), style),
        seg(cell(state, 6), { ...style, color: REPLICA_COLORS[state] ?? 'white' }),
        seg(cell(`hb ${formatRtt(item.heartbeatAgoMs)}`, 10), style),
        seg(cell(owns, Math.max(0, width - 34)), style),
      ),
    )
  }
  return lines
}

/** The facts of an audit entry in a few words: peer, agreement, then the rest as key=value. */
export function auditSummary(entry: AuditEntry): string {
  if (entry.type === RECEIPT_TYPE) {
    // The receipt line of an agreement: what its latest receipt took.
    const { peer, id, batches, records, bytes } = entry.data as {
      peer?: string
      id?: string
      batches?: [number, number]
      records?: number
      bytes?: number
    }
    return [
      peer,
      typeof id === 'string' ? shortId(id) : undefined,
      batches ? `batches ${batches[0]}–${batches[1]}` : undefined,
      typeof records === 'number' ? `${records.toLocaleString('en-US')} records` : undefined,
      typeof bytes === 'number' ? `${bytes.toLocaleString('en-US')} B` : undefined,
    ]
      .filter((part) => part !== undefined)
      .join(' · ')
  }
  const { peer, id, ...rest } = entry.data
  const parts: string[] = []
  if (typeof peer === 'string') parts.push(peer)
  if (typeof id === 'string') parts.push(shortId(id))
  for (const [key, value] of Object.entries(rest)) {
    if (value === null || value === '' || value === undefined) continue
    if (typeof value === 'object') parts.push(`${key}=${JSON.stringify(value)}`)
    else parts.push(`${key}=${String(value)}`)
  }
  return parts.join(' ')
}

export function auditLines(props: PaneProps, waiting: boolean): LineSpec[] {
  const { lists, width } = props
  const items = lists.audit
  const selected = selectedIndex(props.state, lists, 'audit')
  const lines = [
    titleLine(
      'audit-title',
      'Recent audit events',
      [seg(items.length > props.rows ? countText(selected, props.rows, items.length) : '', { dim: true })],
      props.state.focus === 'audit',
      width,
    ),
  ]
  if (items.length === 0)
    lines.push(line('audit-none', seg(waiting ? '  …' : '  nothing yet', { dim: true })))
  for (const { item, selected: isSelected } of visible(items, 'audit', props)) {
    const style = rowStyle(isSelected)
    const alarming = /refused|violation|dropped|bad_frame|revoked|rejected/.test(item.type)
    lines.push(
      line(
        `audit-${keyOf('audit', item)}`,
        marker(isSelected),
        seg(cell(clockTime(item.ts), 9), { ...style, dim: !isSelected }),
        seg(cell(item.type, 25), { ...style, ...(alarming ? { color: 'yellow' } : {}) }),
        seg(cell(auditSummary(item), Math.max(0, width - 36)), style),
      ),
    )
  }
  return lines
}

// ---- review, help, footer ----------------------------------------------------------------------

export interface ReviewProps {
  agreement: AgreementSummary | undefined
  detail: AgreementDetail | undefined
  rate: AgreementRate | undefined
  peer: PeerView | undefined
  now: number
  width: number
  rows: number
  scroll: number
}

function field(key: string, label: string, value: string, width: number, style: Omit<Segment, 'text'> = {}) {
  return wrapText(value, Math.max(10, width - 13), '').map((text, index) =>
    line(
      `${key}-${index}`,
      seg(index === 0 ? cell(`  ${label}`, 13) : ' '.repeat(13), { dim: true }),
      seg(text, style),
    ),
  )
}

export function reviewBody(props: ReviewProps): LineSpec[] {
  const { agreement: a, detail, rate, width, now } = props
  if (!a) return [line('gone', seg('  This agreement is no longer listed by the node.', { dim: true }))]
  const peerName = props.peer ? `${a.peer} (${props.peer.org})` : a.peer
  const ours = a.role === 'provider' ? a.provider : a.consumer
  const lines: LineSpec[] = [
    ...field('purpose', 'purpose', a.purpose, width),
    ...field(
      'you',
      'you',
      a.role === 'consumer'
        ? `receive data: ${a.provider} provides it to ${ours} (you are the consumer)`
        : `provide data: ${ours} sends it to ${a.consumer} (you are the provider)`,
      width,
    ),
    ...field('peer', 'peer', peerName, width),
    ...field(
      'valid',
      'valid',
      `${shortDate(a.validFrom)} → ${shortDate(a.validUntil)} UTC (${timeLeft(a, now)}${timeLeft(a, now).startsWith('in ') || timeLeft(a, now) === '—' ? '' : ' left'})`,
      width,
    ),
  ]
  const limit = detail?.body.limits?.maxRecordsPerSec
  if (limit) lines.push(...field('limit', 'rate limit', `at most ${limit} records/s`, width))
  if (detail) {
    const signers = (['provider', 'consumer'] as const).filter((role) => detail.signatures[role])
    lines.push(...field('signed', 'signed by', signers.join(', ') || 'nobody', width))
  }
  lines.push(...field('id', 'id', a.id, width, { dim: true }))
  lines.push(line('grants-gap'), line('grants-title', seg('  Grants, in plain words:', { bold: true })))
  a.grants.forEach((grant, grantIndex) => {
    const words = wrapText(`• ${describeGrant(grant, a.provider, a.consumer)}`, width - 4, '  ')
    for (const [index, text] of words.entries())
      lines.push(line(`grant-${grantIndex}-${index}`, seg(`    ${text}`)))
  })
  if (detail && (a.state === 'active' || a.state === 'accepted')) {
    const flow = detail.flow
    const drops = sumDrops(flow.drops)
    const reasons = Object.entries(flow.drops)
      .filter(([, count]) => (count ?? 0) > 0)
      .map(([reason, count]) => `${reason} ${count}`)
    lines.push(line('flow-gap'), line('flow-title', seg('  Flow', { bold: true })))
    lines.push(
      ...field(
        'rates',
        'records/s',
        `in ${formatRate(rate?.inPerSec)} · out ${formatRate(rate?.outPerSec)} (total ${formatCount(flow.recordsIn)} in, ${formatCount(flow.recordsOut)} out)`,
        width,
      ),
      ...field('drops', 'drops', drops === 0 ? '0' : `${drops}: ${reasons.join(', ')}`, width, {
        ...(drops > 0 ? { color: 'red' } : {}),
      }),
      ...field(
        'batch',
        'last batch',
        `${formatAgo(flow.lastBatchAt, now)} · rtt ${formatRtt(flow.rttMs)} · session ${flow.session ? 'open' : 'none'}`,
        width,
      ),
      line(
        'spark',
        seg(cell('  rate', 13), { dim: true }),
        seg(sparkline(rate?.history ?? [], Math.max(0, width - 14)), { color: 'green' }),
      ),
    )
    if (flow.lastError)
      lines.push(...field('flow-error', 'last error', flow.lastError, width, { color: 'red' }))
  }
  for (const [kind, termination] of [
    ['revoked', detail?.revocation],
    ['rejected', detail?.rejection],
  ] as const) {
    if (termination)
      lines.push(
        ...field(
          kind,
          kind,
          `${new Date(termination.at).toISOString()}: ${termination.reason || '(no reason)'}`,
          width,
        ),
      )
  }
  if (detail?.outbox.pending)
    lines.push(
      ...field(
        'outbox',
        'undelivered',
        `${detail.outbox.pending} message(s) to ${a.peer}${detail.outbox.lastError ? `: ${detail.outbox.lastError}` : ''}`,
        width,
        { color: 'yellow' },
      ),
    )
  return lines
}

export function reviewTitle(agreement: AgreementSummary | undefined, peer: PeerView | undefined): Segment[] {
  if (!agreement) return [seg('Agreement')]
  const from = peer ? `${agreement.peer} (${peer.org})` : agreement.peer
  if (agreement.state === 'proposed' && agreement.awaitingUs)
    return [
      seg(`Review proposal ${shortId(agreement.id)} from ${from}`, { bold: true }),
      seg(' — awaits your signature', { color: 'yellow', bold: true }),
    ]
  if (agreement.state === 'proposed')
    return [
      seg(`Your proposal ${shortId(agreement.id)} to ${from}`, { bold: true }),
      seg(' — awaits their signature', { dim: true }),
    ]
  return [
    seg(`Agreement ${shortId(agreement.id)} with ${from} `, { bold: true }),
    seg(agreement.state, { color: STATE_COLORS[agreement.state] ?? 'white', bold: true }),
  ]
}

export function reviewLines(props: ReviewProps): LineSpec[] {
  const body = reviewBody(props)
  const bodyRows = Math.max(1, props.rows - 1)
  const start = Math.max(0, Math.min(props.scroll, body.length - bodyRows))
  const shown = body.slice(start, start + bodyRows)
  const more = body.length - (start + bodyRows)
  if (more > 0)
    shown[shown.length - 1] = line('more', seg(`  ↓ ${more + 1} more lines (↓ scrolls)`, { dim: true }))
  return [
    line(
      'review-title',
      seg('▶ ', { color: 'cyan', bold: true }),
      ...reviewTitle(props.agreement, props.peer),
    ),
    ...shown,
  ]
}

export function ReviewScreen(props: ReviewProps) {
  return <Lines lines={reviewLines(props)} width={props.width} />
}

export function helpLines(width: number): LineSpec[] {
  return [
    line('help-title', seg('▶ Keys', { color: 'cyan', bold: true })),
    ...KEY_HELP.flatMap(([keys, what]) =>
      wrapText(what, Math.max(10, width - 25)).map((text, index) =>
        line(
          `help-${keys}-${index}`,
          seg(cell(index === 0 ? `  ${keys}` : '', 24), { bold: true }),
          seg(text),
        ),
      ),
    ),
    line('help-gap'),
    ...wrapText(
      'The screen polls the node every second; records/s come from the difference of its flow counters between polls. Proposals are signed only from their review screen, after their grants are shown in plain words.',
      width - 4,
    ).map((text, index) => line(`help-note-${index}`, seg(`  ${text}`, { dim: true }))),
  ]
}

export function footerLine(state: UiState, snapshot: UiSnapshot | undefined, hints: string): LineSpec {
  const question = confirmQuestion(state, snapshot)
  if (question) return line('footer', seg(` ${question} `, { color: 'yellow', inverse: true, bold: true }))
  if (state.busy) return line('footer', seg(` ${state.busy}…`, { color: 'cyan' }))
  if (state.message)
    return line(
      'footer',
      seg(` ${state.message.text}`, { color: state.message.tone === 'ok' ? 'green' : 'red' }),
    )
  return line('footer', seg(` ${hints}`, { dim: true }))
}

export function hintsFor(state: UiState, agreement: AgreementSummary | undefined): string {
  if (state.screen === 'help') return 'any key closes help · q quit'
  if (state.screen === 'review') {
    const actions =
      agreement?.state === 'proposed'
        ? agreement.awaitingUs
          ? 'a accept & sign · r reject · '
          : 'r withdraw · '
        : agreement && ['active', 'accepted'].includes(agreement.state)
          ? 'x revoke · '
          : ''
    return `${actions}↑↓ scroll · esc back · ? help · q quit`
  }
  if (state.screen === 'plugin') return '↑↓ scroll · esc back · ? help · q quit'
  const pane =
    state.focus === 'pending'
      ? 'enter review · '
      : state.focus === 'agreements'
        ? 'enter details · x revoke · '
        : state.focus === 'plugins'
          ? 'enter details · '
          : ''
  return `${pane}tab pane · ↑↓ select · ? help · q quit`
}

// ---- the whole screen --------------------------------------------------------------------------

export interface ScreenProps {
  view: NodeView
  state: UiState
  size: Size
}

/** Every line of the screen for this state and size. */
export function screenLines({ view, state, size }: ScreenProps): LineSpec[] {
  const { columns: width } = size
  if (width < MIN_SIZE.columns || size.rows < MIN_SIZE.rows)
    return [
      line(
        'small',
        seg(
          `terminal too small: ${width}×${size.rows}; oe-node ui needs ${MIN_SIZE.columns}×${MIN_SIZE.rows}`,
          {
            color: 'yellow',
          },
        ),
      ),
    ]
  const { snapshot, unreachable } = view
  // Times on screen are relative to the data they describe, also while the node is away.
  const now = snapshot?.at ?? 0
  const lists = listsOf(snapshot)
  const agreement = reviewed(state, snapshot)
  const top = [...headerLines(snapshot?.status, width)]
  if (unreachable) top.push(bannerLine(unreachable, snapshot?.at, Date.now()))
  const footer = footerLine(state, snapshot, hintsFor(state, agreement))
  const available = paneRows(size, unreachable !== undefined)

  if (state.screen === 'help') return [...top, ...helpLines(width).slice(0, available), footer]
  if (state.screen === 'plugin') {
    const pluginId = state.pluginId ?? ''
    const detail = pluginDetailLines({
      plugin: lists.plugins.find((candidate) => candidate.id === pluginId),
      pluginId,
      now,
      width,
      rows: available,
      scroll: state.scroll,
    })
    return [...top, ...detail, footer]
  }
  if (state.screen === 'review') {
    const peer = lists.peers.find((candidate) => candidate.alias === agreement?.peer)
    const review = reviewLines({
      agreement,
      detail: agreement ? snapshot?.details[agreement.id] : undefined,
      rate: agreement ? view.rates[agreement.id] : undefined,
      peer,
      now,
      width,
      rows: available,
      scroll: state.scroll,
    })
    return [...top, ...review, footer]
  }

  const withReplicas = paneShown('replicas', lists)
  const blocks: Block[] = [
    { panes: ['agreements'], overhead: 2, items: lists.agreements.length },
    { panes: ['pending'], overhead: 1, items: lists.pending.length },
    { panes: ['peers', 'plugins'], overhead: 1, items: Math.max(lists.peers.length, lists.plugins.length) },
    { panes: ['audit'], overhead: 1, items: lists.audit.length },
    ...(withReplicas ? [{ panes: ['replicas'] as PaneId[], overhead: 1, items: lists.replicas.length }] : []),
  ]
  const rows = allocateRows(available, blocks, state.focus) ?? blocks.map(() => 1)
  const waiting = snapshot === undefined
  const pane = (index: number, paneWidth = width): PaneProps => ({
    lists,
    state,
    rows: rows[index]!,
    width: paneWidth,
  })
  const left = Math.floor(width / 2)
  const peers = peerLines(pane(2, left), now)
  const plugins = pluginLines(pane(2, width - left))
  const services = peers.map((peerLine, index) => {
    const pluginLine = plugins[index] ?? line('plugins-blank')
    const padded = fitSegments(peerLine.segments, left)
    const used = padded.reduce((total, segment) => total + textWidth(segment.text), 0)
    return line(
      `${peerLine.key}|${pluginLine.key}`,
      ...padded,
      seg(' '.repeat(left - used)),
      ...pluginLine.segments,
    )
  })
  for (let index = peers.length; index < plugins.length; index++) {
    const pluginLine = plugins[index]!
    services.push(line(`blank|${pluginLine.key}`, seg(' '.repeat(left)), ...pluginLine.segments))
  }
  return [
    ...top,
    ...agreementLines(
      { ...pane(0), details: snapshot?.details ?? {}, rates: { ...view.rates } },
      now,
      waiting,
    ),
    ...pendingLines(pane(1), waiting),
    ...services,
    ...(withReplicas ? replicaLines({ ...pane(4), status: snapshot?.status }) : []),
    ...auditLines(pane(3), waiting),
    footer,
  ]
}

export function Screen(props: ScreenProps) {
  return <Lines lines={screenLines(props)} width={props.size.columns} />
}

/**
 * What a plugin reports about itself, laid out for people: the detail screen of `oe-node ui`
 * (enter on the Plugins pane) and the plugin lines of `oe-node status`. The OpenADR plugins get
 * their own view: the VTN's VENs (resources, last seen, active events, last report) and the
 * events in force; the VEN's link to its VTN (URL, version, registered, last poll) and the
 * events it follows. Any other plugin shows its status fields as they come. A plugin whose
 * single-owner work runs on another replica of the node says `role: 'standby'` (and only its
 * config): it shows as standing by, not as down.
 */
import type { LineSpec, Segment } from './components.tsx'
import { cell, clockTime, formatAgo, shortId, textWidth, truncate } from './format.ts'
import type { PluginView } from './model.ts'

const seg = (text: string, style: Omit<Segment, 'text'> = {}): Segment => ({ text, ...style })
const line = (key: string, ...segments: Segment[]): LineSpec => ({ key, segments })

interface VenRow {
  id: string
  name: string
  clientID?: string
  resources: string[]
  lastSeen?: number
  activeEvents: number
  lastReport?: { id: string; name?: string; eventID: string; at: number; values: Record<string, unknown> }
}

interface VtnEventRow {
  id: string
  name?: string
  program: string
  targets?: string[]
  start: number
  end?: number
  now?: { type: string; value: unknown }
}

interface VenEventRow {
  id: string
  name?: string
  start: number
  end?: number
  resources: string[]
  now: { type: string; value: unknown }[]
}

const plural = (count: number, word: string) => `${count} ${word}${count === 1 ? '' : 's'}`

const asArray = <T>(value: unknown): T[] => (Array.isArray(value) ? (value as T[]) : [])

/** `IMPORT_CAPACITY_LIMIT 4`, from a type and value. */
function signal(now: { type: string; value: unknown } | undefined): string {
  if (!now) return '—'
  return `${now.type} ${typeof now.value === 'object' ? JSON.stringify(now.value) : String(now.value)}`
}

/** When an event ends: a clock time (UTC), or `open` for one without an end. */
function until(end: number | undefined, start: number, now: number): string {
  if (start > now) return `from ${clockTime(start)}`
  return end === undefined ? 'open' : `to ${clockTime(end)}`
}

function lastReportText(report: VenRow['lastReport'], now: number): string {
  if (!report) return 'none yet'
  const values = Object.entries(report.values)
    .slice(0, 2)
    .map(([type, value]) => `${type} ${String(value)}`)
    .join(', ')
  return `${values || report.name || shortId(report.id)} · ${formatAgo(report.at, now)}`
}

/** What a standby replica shows instead of its (absent) link to the outside. */
export const STANDBY_TEXT = 'standby (another replica runs it)'

/** This replica stands by: another one runs the plugin's single-owner work. */
const isStandby = (plugin: PluginView) => plugin.role === 'standby'

/** The link line of a standby replica: no link of its own, and who has it when known. */
function standbyField(plugin: PluginView): LineSpec {
  const owner = typeof plugin.owner === 'string' ? ` · owner ${plugin.owner}` : ''
  return field('link', 'link', `○ ${STANDBY_TEXT}${owner}`, { color: 'cyan' })
}

/** A few words for the Plugins pane: what the plugin serves or follows, and its events in force. */
export function pluginSummary(plugin: PluginView): string | undefined {
  if (isStandby(plugin)) return STANDBY_TEXT
  if (plugin.id === 'openadr-vtn') {
    const vens = asArray<VenRow>(plugin.vens)
    const events = asArray<VtnEventRow>(plugin.activeEvents)
    const objects = plugin.objects as { vens?: number } | undefined
    return `${plural(objects?.vens ?? vens.length, 'VEN')} · ${plural(events.length, 'event')}`
  }
  if (plugin.id === 'openadr-ven') {
    const events = asArray<VenEventRow>(plugin.activeEvents)
    const link = plugin.connected ? 'VTN up' : 'VTN DOWN'
    return `${link} · ${plural(events.length, 'event')}`
  }
  if (plugin.id === 'csip-aus') {
    const sites = Object.values((plugin.sites ?? {}) as Record<string, CsipSiteRow>)
    const registered = sites.filter((site) => site.registered).length
    const link = plugin.connected ? 'server up' : 'server DOWN'
    return `${link} · ${registered}/${plural(sites.length, 'site')} registered`
  }
  return undefined
}

interface CsipSiteRow {
  lfdi?: string
  registered?: boolean
  endDevice?: string
  halted?: string
  controls?: Record<string, { v: number; u: string; until?: number; source: string }>
  lastPost?: { at: number; readings: number }
}

function csipBody(plugin: PluginView, now: number, width: number): LineSpec[] {
  const sites = Object.entries((plugin.sites ?? {}) as Record<string, CsipSiteRow>)
  const offset = typeof plugin.clockOffsetMs === 'number' ? plugin.clockOffsetMs : 0
  const lines = [
    field(
      'server',
      'server',
      `${String(plugin.server)} (${String(plugin.mode)}, ${String(plugin.version ?? '?')})`,
    ),
  ]
  if (isStandby(plugin)) lines.push(standbyField(plugin))
  else
    lines.push(
      plugin.connected
        ? field(
            'link',
            'link',
            `● connected · last contact ${formatAgo(Date.parse(String(plugin.lastContact)), now)}`,
            {
              color: 'green',
            },
          )
        : field('link', 'link', `● unreachable${plugin.lastError ? `: ${String(plugin.lastError)}` : ''}`, {
            color: 'red',
          }),
      field('clock', 'server clock', `${offset >= 0 ? '+' : ''}${(offset / 1000).toFixed(1)} s from ours`),
    )
  lines.push(line('gap-1'), heading('sites', `Sites (${sites.length})`))
  lines.push(
    ...table(
      'site',
      [12, 12, 34, 12],
      ['site', 'registered', 'control in force', 'last post', 'source'],
      sites.map(([rid, site]) => {
        const controls = Object.entries(site.controls ?? {})
        const shown = controls
          .map(
            ([command, c]) =>
              `${command} ${c.v}${c.u === 'W' ? ' W' : ''}${c.until ? ` to ${clockTime(c.until)}` : ''}`,
          )
          .join(', ')
        return {
          key: rid,
          cells: [
            rid,
            site.halted ? `halted` : site.registered ? (site.endDevice ?? 'yes') : 'not yet',
            shown || 'none',
            site.lastPost ? formatAgo(site.lastPost.at, now) : 'never',
            controls[0]?.[1].source ?? '',
          ],
          ...(site.halted
            ? { style: { color: 'red' as const } }
            : site.registered
              ? {}
              : { style: { color: 'yellow' as const } }),
        }
      }),
      width,
    ),
  )
  return lines
}

function field(key: string, label: string, value: string, style: Omit<Segment, 'text'> = {}): LineSpec {
  return line(key, seg(cell(`  ${label}`, 14), { dim: true }), seg(value, style))
}

function heading(key: string, text: string): LineSpec {
  return line(key, seg(`  ${text}`, { bold: true }))
}

/** A table: fixed columns, the last one takes what is left of `width`. */
function table(
  key: string,
  widths: number[],
  header: string[],
  rows: { key: string; cells: string[]; style?: Omit<Segment, 'text'> }[],
  width: number,
): LineSpec[] {
  const fixed = widths.reduce((total, w) => total + w, 4)
  const last = Math.max(8, width - fixed)
  const render = (cells: string[]) =>
    `    ${cells.map((text, index) => cell(text, index < widths.length ? widths[index]! : last)).join('')}`
  return [
    line(`${key}-head`, seg(render(header), { dim: true })),
    ...rows.map((row) => line(`${key}-${row.key}`, seg(render(row.cells), row.style ?? {}))),
  ]
}

function vtnBody(plugin: PluginView, now: number, width: number): LineSpec[] {
  const vens = asArray<VenRow>(plugin.vens)
  const events = asArray<VtnEventRow>(plugin.activeEvents)
  const objects = (plugin.objects ?? {}) as Record<string, number>
  const versions = asArray<string>(plugin.versions).join(', ')
  const mqtt = plugin.mqtt as { url?: string; unavailable?: string } | undefined
  const lines = [
    field(
      'listen',
      'listen',
      `${String(plugin.listen)} · OpenADR ${versions} · ${plural(Number(plugin.clients ?? 0), 'client')}`,
    ),
    mqtt?.url
      ? field('mqtt', 'MQTT', mqtt.url, { color: 'green' })
      : mqtt?.unavailable
        ? field('mqtt', 'MQTT', `not served: ${mqtt.unavailable}`, { color: 'yellow' })
        : field('mqtt', 'MQTT', 'off (webhooks only)', { dim: true }),
    field('webhooks', 'webhooks', `${Number(plugin.webhooksPending ?? 0)} pending`),
    field(
      'objects',
      'objects',
      ['programs', 'events', 'reports', 'subscriptions']
        .map((kind) => plural(objects[kind] ?? 0, kind.slice(0, -1)))
        .join(' · '),
    ),
    line('gap-1'),
    heading('vens', `VENs (${objects.vens ?? vens.length})`),
  ]
  if (vens.length === 0) lines.push(line('vens-none', seg('    none registered yet', { dim: true })))
  else
    lines.push(
      ...table(
        'ven',
        [14, 22, 11, 8],
        ['name', 'resources', 'last seen', 'events', 'last report'],
        vens.map((ven) => ({
          key: ven.id,
          cells: [
            ven.name,
            ven.resources.join(', ') || '—',
            formatAgo(ven.lastSeen, now),
            String(ven.activeEvents),
            lastReportText(ven.lastReport, now),
          ],
        })),
        width,
      ),
    )
  lines.push(line('gap-2'), heading('events', `Active events (${events.length})`))
  if (events.length === 0) lines.push(line('events-none', seg('    none in force or to come', { dim: true })))
  else
    lines.push(
      ...table(
        'event',
        [10, 18, 28, 13],
        ['id', 'program', 'now', 'when', 'targets'],
        events.map((event) => ({
          key: event.id,
          cells: [
            shortId(event.id),
            event.program,
            signal(event.now),
            until(event.end, event.start, now),
            (event.targets ?? []).join(', ') || 'all VENs',
          ],
        })),
        width,
      ),
    )
  return lines
}

function venBody(plugin: PluginView, now: number, width: number): LineSpec[] {
  const events = asArray<VenEventRow>(plugin.activeEvents)
  const registered = plugin.registered
    ? `as ${String(plugin.venName ?? '?')} (venID ${String(plugin.venID ?? '?')})`
    : 'not yet'
  const vtn = field('vtn', 'VTN', `${String(plugin.vtn)} (OpenADR ${String(plugin.openadrVersion ?? '?')})`)
  // A standby replica knows only its config: no link, registration or events of its own.
  if (isStandby(plugin))
    return [
      vtn,
      standbyField(plugin),
      field('ven', 'VEN name', String(plugin.venName ?? '?')),
      field('resources', 'resources', String(plugin.resources ?? 0)),
    ]
  const lines = [
    vtn,
    plugin.connected
      ? field('link', 'link', '● connected', { color: 'green' })
      : field('link', 'link', `● unreachable${plugin.lastError ? `: ${String(plugin.lastError)}` : ''}`, {
          color: 'red',
        }),
    field('registered', 'registered', registered, plugin.registered ? {} : { color: 'yellow' }),
    field('poll', 'last poll', formatAgo(plugin.lastPoll as number | undefined, now)),
    field('resources', 'resources', String(plugin.resources ?? 0)),
    line('gap-1'),
    heading('events', `Active events (${events.length})`),
  ]
  if (events.length === 0) lines.push(line('events-none', seg('    none in force or to come', { dim: true })))
  else
    lines.push(
      ...table(
        'event',
        [10, 28, 13],
        ['id', 'now', 'when', 'applies to'],
        events.map((event) => ({
          key: event.id,
          cells: [
            shortId(event.id),
            event.now.map(signal).join(', ') || '—',
            until(event.end, event.start, now),
            event.resources.join(', ') || 'none of ours',
          ],
        })),
        width,
      ),
    )
  return lines
}

const HIDDEN = new Set(['id', 'version', 'state', 'ready'])

function genericBody(plugin: PluginView, width: number): LineSpec[] {
  const standby = isStandby(plugin)
  const lines: LineSpec[] = standby ? [standbyField(plugin)] : []
  for (const [key, value] of Object.entries(plugin)) {
    if (HIDDEN.has(key) || value === undefined) continue
    if (standby && (key === 'role' || key === 'owner')) continue
    const text = typeof value === 'string' ? value : JSON.stringify(value)
    lines.push(field(`field-${key}`, key, truncate(text, Math.max(10, width - 14))))
  }
  return lines
}

/** The body of a plugin's detail (no title), for the screen and for `oe-node status`. */
export function pluginDetailBody(plugin: PluginView, now: number, width: number): LineSpec[] {
  const head = field(
    'state',
    'state',
    `${plugin.state}${plugin.ready ? '' : ' (not ready)'} · v${plugin.version}`,
    plugin.state === 'running' && plugin.ready ? { color: 'green' } : { color: 'yellow' },
  )
  const error = plugin.error ? [field('error', 'error', String(plugin.error), { color: 'red' })] : []
  const body =
    plugin.id === 'openadr-vtn'
      ? vtnBody(plugin, now, width)
      : plugin.id === 'openadr-ven'
        ? venBody(plugin, now, width)
        : plugin.id === 'csip-aus'
          ? csipBody(plugin, now, width)
          : genericBody(plugin, width)
  return [head, ...error, ...body]
}

export interface PluginDetailProps {
  plugin: PluginView | undefined
  pluginId: string
  now: number
  width: number
  rows: number
  scroll: number
}

/** The detail screen: a title and as much of the body as fits, from `scroll` on. */
export function pluginDetailLines(props: PluginDetailProps): LineSpec[] {
  const title = line(
    'plugin-title',
    seg('▶ ', { color: 'cyan', bold: true }),
    seg(`Plugin ${props.pluginId}`, { bold: true }),
    ...(props.plugin ? [] : [seg(' — no longer running', { color: 'yellow' })]),
  )
  if (!props.plugin) return [title]
  const body = pluginDetailBody(props.plugin, props.now, props.width)
  const bodyRows = Math.max(1, props.rows - 1)
  const start = Math.max(0, Math.min(props.scroll, body.length - bodyRows))
  const shown = body.slice(start, start + bodyRows)
  const more = body.length - (start + bodyRows)
  if (more > 0)
    shown[shown.length - 1] = line('more', seg(`  ↓ ${more + 1} more lines (↓ scrolls)`, { dim: true }))
  return [title, ...shown]
}

/** Plain text of lines (for `oe-node status`), each cut to `width`. */
export function plainText(lines: readonly LineSpec[], width: number): string[] {
  return lines.map((spec) => {
    const text = spec.segments.map((segment) => segment.text).join('')
    return (textWidth(text) > width ? truncate(text, width) : text).trimEnd()
  })
}

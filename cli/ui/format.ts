/**
 * Plain-text formatting for the terminal UI: fixed-width cells, rates, times, sparklines.
 * Everything here is pure, so the layout can promise a width and tests can check it.
 */

/** Display width of a string, counting one column per code point (our text is Latin and symbols). */
export function textWidth(text: string): number {
  let width = 0
  for (const _ of text) width += 1
  return width
}

/** Cut `text` to `width` columns, marking a cut with `…`. */
export function truncate(text: string, width: number): string {
  if (width <= 0) return ''
  const chars = [...text]
  if (chars.length <= width) return text
  if (width === 1) return '…'
  return `${chars.slice(0, width - 1).join('')}…`
}

/** Exactly `width` columns: truncated, then padded (left-aligned unless `align` is 'right'). */
export function cell(text: string, width: number, align: 'left' | 'right' = 'left'): string {
  const cut = truncate(text, width)
  const pad = ' '.repeat(Math.max(0, width - textWidth(cut)))
  return align === 'right' ? pad + cut : cut + pad
}

/** Word-wrap `text` to lines of at most `width` columns; later lines start with `indent`. */
export function wrapText(text: string, width: number, indent = ''): string[] {
  const lead = textWidth(indent) < width ? indent : ''
  const lines: string[] = []
  let line = ''
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line === '') line = (lines.length === 0 ? '' : lead) + word
    else if (textWidth(line) + 1 + textWidth(word) <= width) line = `${line} ${word}`
    else {
      lines.push(line)
      line = lead + word
    }
    // A word longer than the line is cut where the line ends.
    while (textWidth(line) > width) {
      const chars = [...line]
      const rest = chars.slice(width).join('')
      lines.push(chars.slice(0, width).join(''))
      line = rest === '' ? '' : lead + rest
    }
  }
  if (line !== '' || lines.length === 0) lines.push(line)
  return lines
}

/** The first 8 hex digits of an agreement id, as the CLI's unique-prefix commands accept it. */
export const shortId = (id: string): string => id.slice(0, 8)

/** `12D3KooWAbc…Xyz4` from a peer id. */
export function shortPeerId(peerId: string, keep = 6): string {
  if (peerId.length <= 8 + keep + 1) return peerId
  return `${peerId.slice(0, 8)}…${peerId.slice(-keep)}`
}

/** `0`, `2.5`, `250`, `12.3k`, `4.1M`: records per second, compact. */
export function formatRate(perSecond: number | undefined): string {
  if (perSecond === undefined || !Number.isFinite(perSecond)) return '–'
  if (perSecond <= 0) return '0'
  if (perSecond < 10) return perSecond.toFixed(1)
  if (perSecond < 1000) return String(Math.round(perSecond))
  if (perSecond < 1_000_000) return `${(perSecond / 1000).toFixed(perSecond < 10_000 ? 1 : 0)}k`
  return `${(perSecond / 1_000_000).toFixed(1)}M`
}

/** `12`, `3.4k`: a count, compact. */
export function formatCount(count: number): string {
  if (count < 1000) return String(count)
  if (count < 1_000_000) return `${(count / 1000).toFixed(count < 10_000 ? 1 : 0)}k`
  return `${(count / 1_000_000).toFixed(1)}M`
}

/** The two largest units of a span: `45s`, `3m 12s`, `23h 59m`, `5d 3h`. */
export function formatSpan(ms: number): string {
  const seconds = Math.max(0, Math.floor(ms / 1000))
  const units: [string, number][] = [
    ['d', Math.floor(seconds / 86400)],
    ['h', Math.floor((seconds % 86400) / 3600)],
    ['m', Math.floor((seconds % 3600) / 60)],
    ['s', seconds % 60],
  ]
  const first = units.findIndex(([, value]) => value > 0)
  if (first === -1) return '0s'
  return units
    .slice(first, first + 2)
    .filter(([, value], index) => index === 0 || value > 0)
    .map(([unit, value]) => `${value}${unit}`)
    .join(' ')
}

/** `now`, `12s ago`, `3m ago`, `never`. */
export function formatAgo(at: string | number | null | undefined, now: number): string {
  if (at === null || at === undefined) return 'never'
  const ms = typeof at === 'number' ? at : Date.parse(at)
  if (Number.isNaN(ms)) return '?'
  const elapsed = now - ms
  if (elapsed < 1500) return 'now'
  return `${formatSpan(elapsed).split(' ')[0]} ago`
}

/** Milliseconds as `3ms`, `1.2s`. */
export function formatRtt(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return '–'
  if (ms < 1000) return `${Math.round(ms)}ms`
  return `${(ms / 1000).toFixed(1)}s`
}

/** `HH:MM:SS` in UTC, so two nodes' screens line up. */
export function clockTime(ms: number): string {
  return new Date(ms).toISOString().slice(11, 19)
}

/** `2027-06-30 00:00` (UTC) from an ISO time. */
export function shortDate(iso: string): string {
  const ms = Date.parse(iso)
  if (Number.isNaN(ms)) return iso
  return new Date(ms).toISOString().slice(0, 16).replace('T', ' ')
}

const BARS = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█']

/**
 * The last `width` values as bars scaled to the largest of them; zero is the lowest bar and any
 * non-zero value at least the second, so a trickle stays visible. Short histories are right-aligned.
 */
export function sparkline(values: readonly number[], width: number): string {
  if (width <= 0) return ''
  const shown = values.slice(-width)
  const max = Math.max(0, ...shown)
  const bars = shown.map((value) => {
    if (!(value > 0) || max === 0) return BARS[0]!
    return BARS[Math.max(1, Math.min(BARS.length - 1, Math.round((value / max) * (BARS.length - 1))))]!
  })
  return ' '.repeat(width - bars.length) + bars.join('')
}

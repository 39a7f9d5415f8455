/**
 * Event and interval timing (OpenADR 3.1.0 User Guide §7.3–7.4): ISO 8601 durations, the
 * `intervalPeriod` inherited from the event and overridden per interval, intervals that follow
 * the previous one, the `0001-01-01` start ("the beginning of time"), `P9999Y` as infinity,
 * `randomizeStart`, `event.duration` that truncates or loops the intervals, and multi-valued
 * payloads split into sub-intervals. Used by the VTN (`active` events, 3.0.1 rendering) and the
 * VEN (what applies when).
 */

/** Epoch ms of `0001-01-01T00:00:00Z`. */
export const BEGINNING_OF_TIME = Date.parse('0001-01-01T00:00:00Z')

const DURATION =
  /^(-?)P(?=\d|T\d)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)([DW]))?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$/

export interface Duration {
  negative: boolean
  years: number
  months: number
  /** Days and weeks, hours, minutes and seconds as milliseconds. */
  fixedMs: number
}

export function parseDuration(text: unknown): Duration | undefined {
  if (typeof text !== 'string') return undefined
  const match = DURATION.exec(text)
  if (!match) return undefined
  const number = (index: number) => (match[index] ? Number(match[index]) : 0)
  const days = number(4) * (match[5] === 'W' ? 7 : 1)
  return {
    negative: match[1] === '-',
    years: number(2),
    months: number(3),
    fixedMs: ((days * 24 + number(6)) * 60 + number(7)) * 60_000 + Math.round(number(8) * 1000),
  }
}

/** `P9999Y` (and longer) stands for infinity. */
export function isInfinite(duration: Duration): boolean {
  return !duration.negative && duration.years >= 9999
}

/** `start + duration`, calendar-aware for years and months; Infinity for P9999Y. */
export function addDuration(start: number, duration: Duration): number {
  if (isInfinite(duration)) return Number.POSITIVE_INFINITY
  if (!Number.isFinite(start)) return start
  const sign = duration.negative ? -1 : 1
  let result = start
  if (duration.years !== 0 || duration.months !== 0) {
    const date = new Date(start)
    date.setUTCMonth(date.getUTCMonth() + sign * (duration.years * 12 + duration.months))
    result = date.getTime()
  }
  return result + sign * duration.fixedMs
}

/** Length of a duration in ms from a given start (Infinity for P9999Y). */
export function durationMs(text: unknown, from = 0): number | undefined {
  const duration = parseDuration(text)
  if (!duration) return undefined
  return addDuration(from, duration) - from
}

/** `PT<seconds>S`, or P9999Y for infinity. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return 'P9999Y'
  const seconds = Math.max(0, Math.round(ms / 1000))
  return `PT${seconds}S`
}

export interface IntervalPeriodInput {
  start?: unknown
  duration?: unknown
  randomizeStart?: unknown
}

export interface ValuesMapInput {
  type: string
  values: unknown[]
}

export interface IntervalInput {
  id: number
  intervalPeriod?: IntervalPeriodInput
  payloads?: ValuesMapInput[]
}

export interface EventTimingInput {
  intervalPeriod?: IntervalPeriodInput
  intervals?: IntervalInput[]
  duration?: unknown
}

export interface ResolvedInterval {
  id: number
  /** Epoch ms (randomisation applied). */
  start: number
  /** Epoch ms; Infinity when the interval never ends. */
  end: number
  payloads: ValuesMapInput[]
}

export interface ResolvedEvent {
  intervals: ResolvedInterval[]
  /** Start of the first interval (or the event's start), end of the event's span. */
  start: number
  end: number
  /** Length of one pass over the intervals, when event.duration makes them loop. */
  loopMs?: number
}

const isSentinel = (ms: number) => ms <= BEGINNING_OF_TIME + 86_400_000 - 1 && ms >= BEGINNING_OF_TIME

function parseStart(value: unknown): number | undefined {
  if (typeof value !== 'string') return undefined
  const ms = Date.parse(/^\d{4}-\d{2}-\d{2}$/.test(value) ? `${value}T00:00:00Z` : value)
  return Number.isFinite(ms) ? ms : undefined
}

/** A uniform offset in [-|range|, +|range|]. */
export type Randomiser = (rangeMs: number) => number
export const uniformOffset: Randomiser = (rangeMs) => (Math.random() * 2 - 1) * Math.abs(rangeMs)

/**
 * Resolve an event's intervals to absolute times. `obtained` is when the client got the event
 * (a first interval starting at the beginning of time, with no event start, is 'do it now').
 * A missing duration lasts until the next interval or forever.
 */
export function resolveEvent(
  event: EventTimingInput,
  obtained: number,
  randomise: Randomiser = uniformOffset,
): ResolvedEvent {
  const eventPeriod = event.intervalPeriod ?? {}
  const eventStart = parseStart(eventPeriod.start)
  const intervals: ResolvedInterval[] = []
  let previousEnd: number | undefined
  let offset = 0
  const list = event.intervals ?? []
  list.forEach((interval, index) => {
    const own = interval.intervalPeriod ?? {}
    const ownStart = parseStart(own.start)
    let start: number
    let absolute = false
    if (ownStart !== undefined && !isSentinel(ownStart)) {
      start = ownStart
      absolute = true
    } else if (index === 0 || previousEnd === undefined) {
      if (eventStart !== undefined) {
        start = eventStart
        absolute = true
      } else {
        start = obtained
      }
    } else {
      start = previousEnd
    }
    const randomize = own.randomizeStart ?? (index === 0 ? eventPeriod.randomizeStart : undefined)
    const range = randomize === undefined ? undefined : durationMs(randomize)
    if (range !== undefined && Number.isFinite(range) && range !== 0) {
      offset = randomise(range)
      start += offset
    } else if (absolute || index === 0) {
      start += offset
    }
    const duration = parseDuration(own.duration ?? eventPeriod.duration)
    const end = duration ? addDuration(start, duration) : Number.POSITIVE_INFINITY
    intervals.push({ id: interval.id, start, end, payloads: interval.payloads ?? [] })
    previousEnd = end
  })
  // Open-ended intervals end where the next one begins.
  for (let i = 0; i + 1 < intervals.length; i++) {
    const current = intervals[i]!
    if (
      current.end === Number.POSITIVE_INFINITY &&
      (list[i]?.intervalPeriod?.duration ?? eventPeriod.duration) === undefined
    )
      current.end = Math.max(current.start, intervals[i + 1]!.start)
  }
  const first = intervals[0]?.start ?? (eventStart !== undefined ? eventStart : obtained)
  const last = intervals.reduce((max, interval) => Math.max(max, interval.end), first)
  const span = parseDuration(event.duration)
  if (span) {
    const end = addDuration(first, span)
    const passMs = last - first
    if (end > last && Number.isFinite(passMs) && passMs > 0)
      return { intervals, start: first, end, loopMs: passMs }
    return { intervals, start: first, end }
  }
  if (intervals.length === 0) {
    const duration = parseDuration(eventPeriod.duration)
    return {
      intervals,
      start: first,
      end: duration ? addDuration(first, duration) : Number.POSITIVE_INFINITY,
    }
  }
  return { intervals, start: first, end: last }
}

/** Payload types whose several values are successive sub-intervals (User Guide §7.3). */
const UNITARY = new Set([
  'SIMPLE',
  'PRICE',
  'EXPORT_PRICE',
  'PRICE_ALTERNATE',
  'GHG',
  'IMPORT_CAPACITY_LIMIT',
  'EXPORT_CAPACITY_LIMIT',
  'IMPORT_CAPACITY_SUBSCRIPTION',
  'EXPORT_CAPACITY_SUBSCRIPTION',
  'CHARGE_STATE_SETPOINT',
  'DISPATCH_SETPOINT',
])

export interface ActiveValue {
  intervalId: number
  type: string
  value: unknown
  /** When this value started and stops applying (sub-interval bounds). */
  start: number
  end: number
}

/** The payload values that apply at `t` (none before the event or after it). */
export function valuesAt(event: ResolvedEvent, t: number): ActiveValue[] {
  if (t < event.start || t >= event.end) return []
  let at = t
  let shift = 0
  if (event.loopMs !== undefined && t >= event.start + event.loopMs) {
    const passes = Math.floor((t - event.start) / event.loopMs)
    shift = passes * event.loopMs
    at = t - shift
  }
  const out: ActiveValue[] = []
  for (const interval of event.intervals) {
    if (at < interval.start || at >= interval.end) continue
    for (const payload of interval.payloads) {
      const values = payload.values ?? []
      if (values.length === 0) continue
      if (values.length > 1 && UNITARY.has(payload.type) && Number.isFinite(interval.end)) {
        const step = (interval.end - interval.start) / values.length
        const index = Math.min(values.length - 1, Math.floor((at - interval.start) / step))
        const start = interval.start + index * step + shift
        out.push({
          intervalId: interval.id,
          type: payload.type,
          value: values[index],
          start,
          end: start + step,
        })
      } else {
        out.push({
          intervalId: interval.id,
          type: payload.type,
          value: values.length === 1 ? values[0] : values,
          start: interval.start + shift,
          end: Math.min(interval.end + shift, event.end),
        })
      }
    }
  }
  return out
}

/** Every moment at which what applies may change, after `after` (for scheduling). */
export function changePoints(event: ResolvedEvent, after: number, horizonMs = 86_400_000): number[] {
  const points = new Set<number>()
  const limit = after + horizonMs
  const add = (t: number) => {
    if (Number.isFinite(t) && t > after && t <= limit) points.add(t)
  }
  add(event.start)
  add(event.end)
  const passes = event.loopMs ? Math.min(1000, Math.ceil(horizonMs / event.loopMs) + 1) : 1
  const base = event.loopMs ? Math.max(0, Math.floor((after - event.start) / event.loopMs)) : 0
  for (let pass = base; pass < base + passes; pass++) {
    const shift = event.loopMs ? pass * event.loopMs : 0
    for (const interval of event.intervals) {
      add(interval.start + shift)
      add(interval.end + shift)
      for (const payload of interval.payloads) {
        const count = payload.values?.length ?? 0
        if (count > 1 && UNITARY.has(payload.type) && Number.isFinite(interval.end)) {
          const step = (interval.end - interval.start) / count
          for (let i = 1; i < count; i++) add(interval.start + i * step + shift)
        }
      }
    }
  }
  return [...points].filter((t) => t < event.end || t === event.end).sort((a, b) => a - b)
}

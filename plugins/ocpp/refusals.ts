/**
 * Refused station connections, logged without letting a stranger flood the log: the first
 * refusal of a station in an interval is logged at once; further ones are counted and logged as
 * one line with the count when the interval ends. A station quiet for a whole interval is
 * forgotten, so its next refusal is logged at once again. Memory is bounded: past MAX_STATIONS
 * stations, refusals of new ones are counted together under `station: '*'`.
 *
 * The plugin API has no audit log, so these are log lines (and the refusals metric), not audit
 * entries.
 */
export interface StationRefusal {
  /** The station id as the station gave it (cut to 128 characters). */
  station: string
  /** Why: `unknown` station, `wrong-password`, `subprotocol`, `path` or `station-id`. */
  reason: string
  remote: string | undefined
}

export interface StationRefusalSummary extends StationRefusal {
  /** Refusals since the last line for this station, by reason. */
  count: number
  reasons: Record<string, number>
  since: number
  until: number
}

interface Window {
  last: StationRefusal
  since: number
  count: number
  reasons: Record<string, number>
}

export const MAX_STATIONS = 10_000

export class StationRefusals {
  private readonly windows = new Map<string, Window>()

  constructor(readonly intervalMs = 60_000) {}

  /** Count a refusal; true when it is the first of its station in this interval (log it now). */
  note(refusal: StationRefusal, now = Date.now()): boolean {
    const station = refusal.station.slice(0, 128)
    const key = this.windows.has(station) || this.windows.size < MAX_STATIONS ? station : '*'
    const event = { ...refusal, station: key }
    const window = this.windows.get(key)
    if (window) {
      window.count += 1
      window.reasons[refusal.reason] = (window.reasons[refusal.reason] ?? 0) + 1
      window.last = event
      return false
    }
    // The first refusal of a station is logged now; the overflow key counts it for the summary.
    const first = key === '*'
    this.windows.set(key, {
      last: event,
      since: now,
      count: first ? 1 : 0,
      reasons: first ? { [refusal.reason]: 1 } : {},
    })
    return !first
  }

  /**
   * Summaries of the intervals that ended (all of them with `all`, at stop), each with the
   * refusals counted after the first.
   */
  flush(now = Date.now(), all = false): StationRefusalSummary[] {
    const out: StationRefusalSummary[] = []
    for (const [key, window] of this.windows) {
      if (!all && now - window.since < this.intervalMs) continue
      if (window.count === 0) {
        this.windows.delete(key)
        continue
      }
      out.push({
        ...window.last,
        count: window.count,
        reasons: window.reasons,
        since: window.since,
        until: now,
      })
      window.since = now
      window.count = 0
      window.reasons = {}
    }
    if (all) this.windows.clear()
    return out
  }
}

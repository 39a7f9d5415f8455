/**
 * Refused connections, audited without letting a stranger grow the log: the first refusal of a
 * remote key is audited at once; further ones within the interval are counted and written as one
 * entry with the count when the interval ends. A key quiet for a whole interval is forgotten, so
 * its next refusal is audited at once again. Memory is bounded: past MAX_KEYS keys, refusals of
 * new keys are counted together under `peerId: '*'`.
 */
export interface RefusalEvent {
  peerId: string
  direction: 'inbound' | 'outbound'
  remoteAddr: string
}

export interface RefusalSummary extends RefusalEvent {
  /** Refusals since the last entry for this key. */
  count: number
  since: number
  until: number
}

interface Window {
  event: RefusalEvent
  since: number
  count: number
}

const MAX_KEYS = 10_000

export class RefusalAggregator {
  private readonly windows = new Map<string, Window>()
  /** Every refusal since start, for metrics. */
  total = 0

  constructor(private readonly intervalMs = 60_000) {}

  /** Count a refusal; true when it is the first of its key in this interval (audit it now). */
  note(event: RefusalEvent, now = Date.now()): boolean {
    this.total += 1
    const key = this.windows.has(event.peerId) || this.windows.size < MAX_KEYS ? event.peerId : '*'
    const window = this.windows.get(key)
    if (window) {
      window.count += 1
      window.event = key === '*' ? { ...event, peerId: '*' } : event
      return false
    }
    this.windows.set(key, { event: key === '*' ? { ...event, peerId: '*' } : event, since: now, count: 0 })
    return key !== '*'
  }

  /** Summaries of the intervals that ended, each with the refusals counted in it. */
  flush(now = Date.now()): RefusalSummary[] {
    const out: RefusalSummary[] = []
    for (const [key, window] of this.windows) {
      if (now - window.since < this.intervalMs) continue
      if (window.count === 0) {
        this.windows.delete(key)
        continue
      }
      out.push({ ...window.event, count: window.count, since: window.since, until: now })
      window.since = now
      window.count = 0
    }
    return out
  }
}

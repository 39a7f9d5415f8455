/**
 * Records per second per agreement, from the `flow` counters of successive polls: the counters
 * only grow while a node runs, so a rate is the difference over the time between two answers.
 */

/** The counters of one agreement at one moment. */
export interface FlowSample {
  recordsIn: number
  recordsOut: number
  /** Sum of all drop reasons. */
  drops: number
  /** When the answer arrived (ms, monotonic or epoch, as long as it is the same clock). */
  at: number
}

export interface AgreementRate {
  last: FlowSample
  /** Undefined until two samples were seen. */
  inPerSec?: number
  outPerSec?: number
  dropsPerSec?: number
  /** Recent in+out rates, oldest first, for the sparkline. */
  history: number[]
}

export type RateTable = Readonly<Record<string, AgreementRate>>

/** How many rates each agreement keeps for its sparkline. */
export const RATE_HISTORY = 60

/** Records per second between two counter values; a counter that went down (node restart) counts as 0. */
function perSecond(before: number, after: number, seconds: number): number {
  if (seconds <= 0 || after < before) return 0
  return (after - before) / seconds
}

/**
 * The next rate table: one entry per agreement in `samples` (others are forgotten), each with the
 * rate since its previous sample.
 */
export function nextRates(previous: RateTable, samples: Readonly<Record<string, FlowSample>>): RateTable {
  const next: Record<string, AgreementRate> = {}
  for (const [id, sample] of Object.entries(samples)) {
    const before = previous[id]
    if (!before || sample.at <= before.last.at) {
      next[id] = before && sample.at <= before.last.at ? before : { last: sample, history: [] }
      continue
    }
    const seconds = (sample.at - before.last.at) / 1000
    const inPerSec = perSecond(before.last.recordsIn, sample.recordsIn, seconds)
    const outPerSec = perSecond(before.last.recordsOut, sample.recordsOut, seconds)
    const dropsPerSec = perSecond(before.last.drops, sample.drops, seconds)
    next[id] = {
      last: sample,
      inPerSec,
      outPerSec,
      dropsPerSec,
      history: [...before.history, inPerSec + outPerSec].slice(-RATE_HISTORY),
    }
  }
  return next
}

export const sumDrops = (drops: Readonly<Record<string, number | undefined>>): number =>
  Object.values(drops).reduce<number>((total, count) => total + (count ?? 0), 0)

/**
 * The data hook: polls the node about once per interval (never two requests at a time), turns
 * successive `flow` counters into records/s, and keeps the last good snapshot on screen while
 * the node does not answer.
 */
import { useCallback, useEffect, useRef, useState } from 'react'
import type { NodeView } from './model.ts'
import { type FlowSample, nextRates, sumDrops } from './rates.ts'
import type { UiSnapshot, UiSource } from './source.ts'

export function flowSamples(snapshot: UiSnapshot): Record<string, FlowSample> {
  const samples: Record<string, FlowSample> = {}
  for (const [id, detail] of Object.entries(snapshot.details)) {
    samples[id] = {
      recordsIn: detail.flow.recordsIn,
      recordsOut: detail.flow.recordsOut,
      drops: sumDrops(detail.flow.drops),
      at: snapshot.at,
    }
  }
  return samples
}

/** The view after one poll: a snapshot, or the error that came instead. */
export function nextView(previous: NodeView, outcome: UiSnapshot | Error, now = Date.now()): NodeView {
  if (outcome instanceof Error) {
    return {
      ...previous,
      unreachable: {
        message: outcome.message,
        since: previous.unreachable?.since ?? now,
        attempts: (previous.unreachable?.attempts ?? 0) + 1,
      },
    }
  }
  return { snapshot: outcome, rates: nextRates(previous.rates, flowSamples(outcome)), unreachable: undefined }
}

export const emptyView: NodeView = { snapshot: undefined, rates: {}, unreachable: undefined }

/** Poll `source` every `intervalMs`; `refresh()` polls now (or right after the poll in flight). */
export function useNodeData(source: UiSource, intervalMs: number): NodeView & { refresh: () => void } {
  const [view, setView] = useState<NodeView>(emptyView)
  const wake = useRef<() => void>(() => {})

  useEffect(() => {
    const controller = new AbortController()
    let timer: ReturnType<typeof setTimeout> | undefined
    let polling = false
    let again = false
    const poll = async (): Promise<void> => {
      timer = undefined
      polling = true
      const signal = AbortSignal.any([controller.signal, AbortSignal.timeout(Math.max(3000, intervalMs * 3))])
      let outcome: UiSnapshot | Error
      try {
        outcome = await source.snapshot({ signal })
      } catch (error) {
        outcome = error instanceof Error ? error : new Error(String(error))
      }
      polling = false
      if (controller.signal.aborted) return
      setView((previous) => nextView(previous, outcome))
      timer = setTimeout(poll, again ? 0 : intervalMs)
      again = false
    }
    wake.current = () => {
      if (polling) again = true
      else if (timer !== undefined) {
        clearTimeout(timer)
        void poll()
      }
    }
    void poll()
    return () => {
      controller.abort()
      if (timer !== undefined) clearTimeout(timer)
    }
  }, [source, intervalMs])

  const refresh = useCallback(() => wake.current(), [])
  return { ...view, refresh }
}

/**
 * The interactive app: the data hook, the keyboard, and the actions it sends to the node.
 */
import { useApp, useInput, useStdout } from 'ink'
import { useCallback, useEffect, useMemo, useRef, useState } from 'react'
import { Screen } from './components.tsx'
import { shortId } from './format.ts'
import { type Effect, reduceKey } from './keys.ts'
import type { Size } from './layout.ts'
import { initialUiState, listsOf, type UiState } from './model.ts'
import type { UiSource } from './source.ts'
import { useNodeData } from './use-node-data.ts'

export interface AppProps {
  source: UiSource
  /** Poll interval (default 1 s). */
  intervalMs?: number
  /** Fixed size (tests); otherwise the terminal's, following resizes. */
  size?: Size
  /** How long a message stays in the footer. */
  messageMs?: number
}

/** The terminal's size, updated on resize. */
export function useTerminalSize(fixed: Size | undefined): Size {
  const { stdout } = useStdout()
  const read = useCallback(
    (): Size => fixed ?? { columns: stdout.columns || 80, rows: stdout.rows || 24 },
    [fixed, stdout],
  )
  const [size, setSize] = useState<Size>(read)
  useEffect(() => {
    if (fixed) return
    const onResize = (): void => setSize(read())
    stdout.on('resize', onResize)
    return () => {
      stdout.off('resize', onResize)
    }
  }, [fixed, stdout, read])
  return fixed ?? size
}

const PAST_TENSE: Record<string, string> = { accept: 'accepted', reject: 'rejected', revoke: 'revoked' }
const PROGRESSIVE: Record<string, string> = {
  accept: 'signing and sending the acceptance of',
  reject: 'rejecting',
  revoke: 'revoking',
}

export function App({ source, intervalMs = 1000, size: fixedSize, messageMs = 8000 }: AppProps) {
  const { exit } = useApp()
  const size = useTerminalSize(fixedSize)
  const view = useNodeData(source, intervalMs)
  const [state, setState] = useState<UiState>(initialUiState)
  const lists = useMemo(() => listsOf(view.snapshot), [view.snapshot])
  // Key handlers see the latest data without re-subscribing on every poll.
  const latest = useRef({ state, view, lists })
  latest.current = { state, view, lists }

  const run = useCallback(
    (effect: Effect) => {
      if (effect.kind === 'quit') {
        exit()
        return
      }
      const { id, action } = effect
      setState((current) => ({
        ...current,
        busy: `${PROGRESSIVE[action]} ${shortId(id)}`,
        message: undefined,
      }))
      source.act(id, action, { signal: AbortSignal.timeout(30_000) }).then(
        (result) => {
          setState((current) => ({
            ...current,
            busy: undefined,
            screen: action === 'accept' || current.screen === 'review' ? 'dashboard' : current.screen,
            focus: action === 'accept' ? 'agreements' : current.focus,
            selected: action === 'accept' ? { ...current.selected, agreements: id } : current.selected,
            message: { text: `${PAST_TENSE[action]} ${shortId(id)}: now ${result.state}`, tone: 'ok' },
          }))
          latest.current.view.refresh()
        },
        (error: unknown) => {
          setState((current) => ({
            ...current,
            busy: undefined,
            message: { text: `${action} failed: ${(error as Error).message}`, tone: 'error' },
          }))
          latest.current.view.refresh()
        },
      )
    },
    [exit, source],
  )

  useInput((input, key) => {
    const { state: current, view: currentView, lists: currentLists } = latest.current
    const result = reduceKey(current, input, key, currentView.snapshot, currentLists)
    latest.current.state = result.state
    setState(result.state)
    if (result.effect) run(result.effect)
  })

  // Messages fade after a while; confirmations and work in flight stay.
  useEffect(() => {
    if (!state.message) return
    const timer = setTimeout(() => setState((current) => ({ ...current, message: undefined })), messageMs)
    return () => clearTimeout(timer)
  }, [state.message, messageMs])

  return <Screen view={view} state={state} size={size} />
}

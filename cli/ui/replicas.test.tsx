/**
 * The replicas pane and the replica lines of `oe-node status`: hidden for a node alone, shown
 * (and reachable with tab) for a node with replicas, each with its heartbeat and the leases it
 * holds; the screen still fits 80×24.
 */
import { cleanup, render } from 'ink-testing-library'
import { afterEach, describe, expect, test } from 'vitest'
import { Screen } from './components.tsx'
import { snapshot } from './fixtures.ts'
import { reduceKey } from './keys.ts'
import { initialUiState, listsOf, type NodeView, type UiState } from './model.ts'
import { replicaStatusLines, shortLeaseName } from './replicas.ts'

afterEach(cleanup)

const SIZE = { columns: 80, rows: 24 }
const ANSI = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, 'g')

function frame(otherReplicas: number, state: Partial<UiState> = {}): string {
  const view: NodeView = { snapshot: snapshot({ otherReplicas }), rates: {}, unreachable: undefined }
  const { lastFrame, unmount } = render(
    <Screen view={view} state={{ ...initialUiState, ...state }} size={SIZE} />,
  )
  const text = (lastFrame() ?? '').replace(ANSI, '')
  unmount()
  return text
}

describe('replicas pane', () => {
  test('a node alone has no replicas pane, and tab skips it', () => {
    expect(frame(0)).not.toContain('Replicas')
    const lists = listsOf(snapshot())
    const result = reduceKey({ ...initialUiState, focus: 'plugins' }, '', { tab: true }, snapshot(), lists)
    expect(result.state.focus).toBe('audit')
  })

  test('a node with replicas lists each with its state and the leases it holds', () => {
    const text = frame(3, { focus: 'replicas' })
    expect(text).toContain('Replicas (4)')
    expect(text).toMatch(/r-0a1b2c\s+this/)
    expect(text).toMatch(/r-000001\s+up\s+hb 1\.6s\s+1 · transfer\.[0-9a-f]{8}…/)
    expect(text).toMatch(/r-000003\s+stale/)
    for (const row of text.split('\n')) expect(row.length).toBeLessThanOrEqual(SIZE.columns)
    expect(text.split('\n').length).toBeLessThanOrEqual(SIZE.rows)
    const snap = snapshot({ otherReplicas: 3 })
    const result = reduceKey({ ...initialUiState, focus: 'plugins' }, '', { tab: true }, snap, listsOf(snap))
    expect(result.state.focus).toBe('replicas')
  })

  test('status lines name every replica and every lease owner', () => {
    const status = snapshot({ otherReplicas: 2 }).status
    const lines = replicaStatusLines(status)
    expect(lines[0]).toBe('replica     r-0a1b2c (3 replicas; streams ×1)')
    expect(lines.filter((line) => /^ {2}r-/.test(line))).toHaveLength(4)
    expect(lines).toContain('leases      1')
    expect(shortLeaseName(`transfer.${'ab'.repeat(32)}`)).toBe('transfer.abababab…')
  })
})

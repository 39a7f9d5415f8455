/**
 * How the dashboard's rows are shared between panes: every pane shows at least one row, the
 * focused one gets what it needs first, then the others in screen order; nothing is padded.
 */
import type { PaneId } from './model.ts'

export interface Size {
  columns: number
  rows: number
}

/** Below this the UI asks for a bigger terminal instead of drawing a broken one. */
export const MIN_SIZE: Size = { columns: 60, rows: 16 }

/** Lines the dashboard draws outside the panes: two header lines and the footer. */
export const CHROME_ROWS = 3

/** Rows of one block that are not items: titles and column headers. */
export interface Block {
  panes: readonly PaneId[]
  overhead: number
  /** Items it could show (the block needs the largest of its panes'). */
  items: number
}

/**
 * Content rows per block for `available` screen rows, or undefined when even one row each does
 * not fit.
 */
export function allocateRows(
  available: number,
  blocks: readonly Block[],
  focus: PaneId,
): number[] | undefined {
  const rows = blocks.map(() => 1)
  let left = available - blocks.reduce((total, block) => total + block.overhead + 1, 0)
  if (left < 0) return undefined
  const focused = blocks.findIndex((block) => block.panes.includes(focus))
  const order = [focused, ...blocks.map((_, index) => index).filter((index) => index !== focused)]
  for (const index of order) {
    if (index < 0) continue
    const extra = Math.min(left, Math.max(0, blocks[index]!.items - 1))
    rows[index]! += extra
    left -= extra
  }
  return rows
}

/** The first item to show so that `selected` is visible in a window of `rows` items. */
export function windowStart(selected: number, rows: number, total: number): number {
  if (total <= rows) return 0
  const start = Math.max(0, selected - Math.floor(rows / 2))
  return Math.min(start, total - rows)
}

/** Screen rows left for the panes (ink's last line stays free so a full screen never scrolls). */
export function paneRows(size: Size, banner: boolean): number {
  return size.rows - 1 - CHROME_ROWS - (banner ? 1 : 0)
}

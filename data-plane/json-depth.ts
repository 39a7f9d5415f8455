/**
 * JSON nesting depth, checked on the text before `JSON.parse`: a body nested 100,000 deep
 * would otherwise reach the parser (and every walker after it). The HTTP listeners refuse
 * anything deeper than `MAX_JSON_DEPTH`; no object of ours or of the protocols nests near it.
 */

/** Deepest JSON nesting a request body may have. */
export const MAX_JSON_DEPTH = 64

/** Whether JSON text nests deeper than `max` (brackets inside strings do not count). */
export function nestsDeeperThan(text: string, max: number = MAX_JSON_DEPTH): boolean {
  let depth = 0
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c === 0x22) {
      for (i++; i < text.length && text.charCodeAt(i) !== 0x22; i++) if (text.charCodeAt(i) === 0x5c) i++
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true
    } else if (c === 0x5d || c === 0x7d) depth--
  }
  return false
}

/**
 * CACTUS client procedure LOA-10 (primacy validation for loads): fifteen programs over two
 * function set assignments, events superseded within and across programs. Compressed 60×.
 */
import { describe, expect } from 'vitest'
import { cactusSuite } from './helpers/csip-client-harness.ts'

describe('CACTUS: primacy', () => {
  cactusSuite([
    {
      id: 'LOA-10',
      title: 'primacy validation for loads',
      limitMs: 70_000,
      also: (run) => {
        expect(run.server.responsesFor('DERC1')).toContain(7) // covered by a better program's event
        expect(run.server.responsesFor('DERC5')).toContain(7) // a newer event of its own program
        expect(run.server.responsesFor('DERC8')).toContain(2) // only overlapped: it still ran
      },
    },
  ])
})

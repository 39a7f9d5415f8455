/**
 * CACTUS client procedures (cactus/client/*.yaml): scheduling, communication loss, de-energising
 * and disconnecting — each by its id, time compressed 60×.
 */
import { describe, expect } from 'vitest'
import { cactusSuite } from './helpers/csip-client-harness.ts'

describe('CACTUS: scheduling and communication loss', () => {
  cactusSuite([
    {
      id: 'ALL-21',
      title: 'scheduling (24 back-to-back controls)',
      limitMs: 45_000,
      also: (run) => {
        const exports = run.client.commands.filter((entry) => entry.command === 'limit_export')
        expect(new Set(exports.map((entry) => entry.payload.source)).size).toBeGreaterThanOrEqual(24)
      },
    },
    {
      id: 'ALL-23',
      title: 'communication loss (the schedule runs on, then the default)',
      also: (run) => {
        // DERC2…DERC5 were in force while the server was unreachable.
        const sources = new Set(run.client.commands.map((entry) => entry.payload.source))
        for (const tag of ['DERC2', 'DERC3', 'DERC4', 'DERC5'])
          expect(sources.has(`csip-aus:event:${run.server.controlByTag(tag)!.mrid}`)).toBe(true)
        expect(run.client.logs.some((entry) => entry.name === 'CsipTransportError')).toBe(true)
      },
    },
    { id: 'ALL-26', title: 'de-energisation of DER' },
    { id: 'ALL-27', title: 'disconnection of DER' },
  ])
})

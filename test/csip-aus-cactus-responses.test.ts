/**
 * CACTUS client procedures (cactus/client/*.yaml): control responses, export and import limits,
 * and the response to a cancelled control — each by its id against the in-repo utility server
 * with mutual TLS, time compressed 60×.
 */
import { describe, expect } from 'vitest'
import { type CactusRun, cactusSuite } from './helpers/csip-client-harness.ts'

const values = (run: CactusRun, command: string) =>
  run.client.commands.filter((entry) => entry.command === command).map((entry) => entry.payload.v)

describe('CACTUS: control responses and limits', () => {
  cactusSuite([
    {
      id: 'ALL-18',
      title: 'control responses (received, started, completed, cancelled, superseded)',
      also: (run) => {
        expect(run.server.responsesFor('DERC1')).toEqual([1, 2, 3])
        expect(run.server.responsesFor('DERC2')).toEqual([1, 2, 6])
        expect(run.server.responsesFor('DERC3')).toEqual([1, 6])
        expect(run.server.responsesFor('DERC4')).toEqual([1, 7])
      },
    },
    {
      id: 'GEN-01',
      title: 'active control – export limit',
      also: (run) => {
        expect(values(run, 'limit_export')).toContain(10_000) // maxExportW × 2
        expect(values(run, 'limit_export')).toContain(0)
      },
    },
    {
      id: 'LOA-01',
      title: 'active control – import limit',
      also: (run) => expect(values(run, 'limit_import')).toContain(0),
    },
    {
      id: 'GEN-09',
      title: 'response to cancelled export control',
      also: (run) => expect(run.server.responses.some((response) => response.status === 6)).toBe(true),
    },
  ])
})

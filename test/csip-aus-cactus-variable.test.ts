/**
 * CACTUS client procedures (cactus/client/*.yaml): variable limits, randomisation and scaling
 * factors — each by its id, time compressed 60×.
 */
import { describe, expect } from 'vitest'
import { type CactusRun, cactusSuite } from './helpers/csip-client-harness.ts'

const values = (run: CactusRun, command: string) =>
  run.client.commands.filter((entry) => entry.command === command).map((entry) => entry.payload.v)
/** Every control the server holds was answered received, started and completed. */
const allCompleted = (run: CactusRun) => {
  for (const control of run.server.controls)
    expect(run.server.responses.filter((r) => r.subject === control.mrid).map((r) => r.status)).toEqual([
      1, 2, 3,
    ])
}

describe('CACTUS: variable limits, randomisation, scaling', () => {
  cactusSuite([
    {
      id: 'GEN-11',
      title: 'variable export limit',
      also: (run) => {
        allCompleted(run)
        expect(new Set(values(run, 'limit_export')).size).toBeGreaterThanOrEqual(5)
      },
    },
    {
      id: 'GEN-12',
      title: 'variable generation limit',
      also: (run) => expect(new Set(values(run, 'limit_generation')).size).toBeGreaterThanOrEqual(5),
    },
    {
      id: 'LOA-11',
      title: 'variable import limit',
      also: (run) => expect(new Set(values(run, 'limit_import')).size).toBeGreaterThanOrEqual(5),
    },
    {
      id: 'LOA-12',
      title: 'variable load limit',
      also: (run) => expect(new Set(values(run, 'limit_load')).size).toBeGreaterThanOrEqual(5),
    },
    {
      id: 'ALL-22',
      title: 'randomisation',
      also: (run) => {
        allCompleted(run)
        // Started within each control's randomisation window, not all at its nominal start.
        const delays = run.server.controls.map((control) => {
          const started = run.server.responses.find((r) => r.subject === control.mrid && r.status === 2)!
          return started.at / 1000 - control.start
        })
        for (const delay of delays)
          expect(delay).toBeLessThanOrEqual((run.server.controls[0]!.randomizeStart ?? 0) + 3)
      },
    },
    { id: 'ALL-24', title: 'validation of scaling factors' },
  ])
})

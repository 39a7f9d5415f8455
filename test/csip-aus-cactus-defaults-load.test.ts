/**
 * CACTUS client procedures (cactus/client/*.yaml): default import and load limits, telemetry
 * post-rate updates — each by its id, time compressed 60×.
 */
import { describe, expect } from 'vitest'
import { type CactusRun, cactusSuite } from './helpers/csip-client-harness.ts'

const fromDefault = (run: CactusRun, command: string) =>
  run.client.commands.some(
    (c) => c.command === command && String(c.payload.source).startsWith('csip-aus:default:'),
  )

describe('CACTUS: default import and load limits, post rates', () => {
  cactusSuite([
    {
      id: 'LOA-03',
      title: 'default control – import limit',
      also: (run) => expect(fromDefault(run, 'limit_import')).toBe(true),
    },
    {
      id: 'LOA-04',
      title: 'default control – load limit',
      also: (run) => expect(fromDefault(run, 'limit_load')).toBe(true),
    },
    { id: 'ALL-10', title: 'update telemetry post rates' },
  ])
})

/**
 * CACTUS client procedures (cactus/client/*.yaml): default controls (export, generation, import,
 * load limits) and telemetry post-rate updates — each by its id, time compressed 60×.
 */
import { describe, expect } from 'vitest'
import { type CactusRun, cactusSuite } from './helpers/csip-client-harness.ts'

const fromDefault = (run: CactusRun, command: string) =>
  run.client.commands.some(
    (c) => c.command === command && String(c.payload.source).startsWith('csip-aus:default:'),
  )

describe('CACTUS: default controls', () => {
  cactusSuite([
    {
      id: 'GEN-03',
      title: 'default control – export limit',
      limitMs: 45_000,
      also: (run) => expect(fromDefault(run, 'limit_export')).toBe(true),
    },
    {
      id: 'GEN-04',
      title: 'default control – generation limit',
      also: (run) => expect(fromDefault(run, 'limit_generation')).toBe(true),
    },
  ])
})

/**
 * CACTUS client procedures (cactus/client/*.yaml): active generation and load limits,
 * cancellation, tracking import limits, DRED load instructions, EVSE alternates — each by its id,
 * time compressed 60×.
 */
import { describe, expect } from 'vitest'
import { cactusSuite } from './helpers/csip-client-harness.ts'

describe('CACTUS: generation and load limits', () => {
  cactusSuite([
    {
      id: 'GEN-02',
      title: 'active control – generation limit',
      also: (run) =>
        expect(run.client.commands.some((c) => c.command === 'limit_generation' && c.payload.v === 0)).toBe(
          true,
        ),
    },
    {
      id: 'LOA-02',
      title: 'active control – load limit',
      also: (run) =>
        expect(run.client.commands.some((c) => c.command === 'limit_load' && c.payload.v === 0)).toBe(true),
    },
    { id: 'LOA-09', title: 'response to cancelled import control' },
    { id: 'LOA-13', title: 'tracking import-limit through variable load' },
    { id: 'ALT-ALL-29', title: 'validate operating telemetry (EVSE alternate)' },
    { id: 'ALT-LOA-13', title: 'tracking import-limit through variable load (EVSE alternate)' },
    { id: 'DRL-01', title: 'load operational instructions' },
  ])
})

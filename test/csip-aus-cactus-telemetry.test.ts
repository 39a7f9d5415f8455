/**
 * CACTUS client procedures (cactus/client/*.yaml): ramp-rate changes, operating telemetry,
 * persisting settings through reconnection, tracking limits — each by its id, compressed 60×.
 */
import { describe } from 'vitest'
import { cactusSuite } from './helpers/csip-client-harness.ts'

describe('CACTUS: telemetry under controls, reconnection', () => {
  cactusSuite([
    { id: 'ALL-28', title: 'response to changing ramp-rates' },
    { id: 'ALL-29', title: 'validate operating telemetry' },
    { id: 'ALL-30', title: 'persisting settings through reconnection' },
    { id: 'GEN-13', title: 'tracking export-limit through variable load' },
  ])
})

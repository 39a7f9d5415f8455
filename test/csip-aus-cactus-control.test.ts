/**
 * CACTUS client procedures (cactus/client/*.yaml): connection and energisation controls, default
 * ramp rates, poll and post rates, multiple DER — each by its id, time compressed 60×.
 */
import { describe, expect } from 'vitest'
import { type CactusRun, cactusSuite } from './helpers/csip-client-harness.ts'

const values = (run: CactusRun, command: string) =>
  run.client.commands.filter((entry) => entry.command === command).map((entry) => entry.payload.v)

describe('CACTUS: connection, ramp rates, rates, multiple DER', () => {
  cactusSuite([
    {
      id: 'ALL-11',
      title: 'active control – energise / de-energise',
      also: (run) => expect(values(run, 'connect')).toEqual(expect.arrayContaining([0, 1])),
    },
    {
      id: 'ALL-12',
      title: 'active control – disconnect',
      also: (run) => expect(values(run, 'connect')).toContain(0),
    },
    { id: 'ALL-13', title: 'default controls – ramp rate (DERSettings setGradW follows the default)' },
    { id: 'ALL-19', title: 'update function set assignments poll rate' },
    { id: 'ALL-20', title: 'update DER program poll rate' },
    { id: 'ALL-25', title: 'active control ramp rates' },
    { id: 'DRA-01', title: 'configuration' },
    { id: 'MUL-02', title: 'reporting aggregated telemetry for multiple DER' },
    { id: 'MUL-03', title: 'DERCapability and DERSettings for multiple DER' },
  ])
})

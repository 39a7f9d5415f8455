/**
 * CACTUS client conformance procedures (cactus/client/*.yaml), each run by its id against the
 * in-repo utility server with mutual TLS, time compressed 60× (a procedure minute is a second).
 * The client runs in aggregator mode for one site with the out-of-band registration the
 * procedures assume (LFDI 3E4F…00000000, PIN 11111 → 111115).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { AGGREGATOR_SITE_LFDI, type CactusRun, runCactus } from './helpers/csip-client-harness.ts'
import { makePki, type Pki } from './helpers/csip-server.ts'

const SCALE = 60
/** The site as the installer configured it, with the PIN the utility gave (11111). */
const _PIN = {
  mode: 'aggregator',
  sites: {
    'site-1': {
      nmi: '4103000001',
      lfdi: AGGREGATOR_SITE_LFDI,
      pin: 11111,
      meter: 'meter.site-1-meter',
      ders: ['pv.site-1-pv', 'battery.site-1-bat'],
      rated_w: 5000,
    },
  },
}
let dir: string
let pki: Pki

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'csip-cactus-'))
  pki = makePki(dir)
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

type Run = CactusRun

const runProcedure = (id: string, options: { limitMs?: number; config?: Record<string, unknown> } = {}) =>
  runCactus(pki, id, { scale: SCALE, ...options })

function expectCriteria(run: Run): void {
  const failed = run.runner.criteria().filter((result) => !result.ok)
  expect(failed, run.runner.log.join('\n')).toEqual([])
  expect(run.client.logs.filter((entry) => entry.level === 'error')).toEqual([])
}

describe('controls', () => {
  test('ALL-18 control responses (received, started, completed, cancelled, superseded)', async () => {
    const run = await runProcedure('ALL-18')
    expectCriteria(run)
    expect(run.server.responsesFor('DERC1')).toEqual([1, 2, 3])
    expect(run.server.responsesFor('DERC2')).toEqual([1, 2, 6])
    expect(run.server.responsesFor('DERC3')).toEqual([1, 6])
    expect(run.server.responsesFor('DERC4')).toEqual([1, 7])
  }, 60_000)

  test('GEN-01 active control – export limit', async () => {
    const run = await runProcedure('GEN-01')
    expectCriteria(run)
    const exports = run.client.commands.filter((c) => c.command === 'limit_export').map((c) => c.payload.v)
    expect(exports).toContain(10_000) // maxExportW × 2
    expect(exports).toContain(0)
  }, 60_000)

  test('LOA-01 active control – import limit', async () => {
    const run = await runProcedure('LOA-01')
    expectCriteria(run)
    expect(run.client.commands.some((c) => c.command === 'limit_import' && c.payload.v === 0)).toBe(true)
  }, 60_000)

  test('GEN-09 response to cancelled export control', async () => {
    const run = await runProcedure('GEN-09')
    expectCriteria(run)
    expect(run.server.responses.some((r) => r.status === 6)).toBe(true)
  }, 60_000)
})

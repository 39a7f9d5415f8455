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
const PIN = {
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

describe('registration and discovery', () => {
  test('ALL-01 discovery with out-of-band registration', async () => {
    const run = await runProcedure('ALL-01', { config: PIN })
    expectCriteria(run)
    // Found, not registered again.
    expect(run.server.requests.filter((r) => r.method === 'POST' && r.path === '/edev')).toHaveLength(0)
  }, 60_000)

  test('ALL-02 discovery with in-band registration', async () => {
    const run = await runProcedure('ALL-02')
    expectCriteria(run)
    const device = run.server.devices[0]!
    expect(device.lfdi).toBe(AGGREGATOR_SITE_LFDI) // the site's LFDI, not the aggregator certificate's
    expect(device.sfdi).toBe('167261211391')
  }, 60_000)

  test('ALL-03 connection point registration', async () => {
    const run = await runProcedure('ALL-03')
    expectCriteria(run)
    expect(run.server.devices[0]!.nmi).toBe('4103000001')
  }, 60_000)

  test('ALL-03-REJ client rejection of incorrect PIN', async () => {
    const run = await runProcedure('ALL-03-REJ', { config: PIN })
    expect(run.runner.criteria().filter((result) => !result.ok)).toEqual([])
    const after = run.server.requests.filter((r) => r.path.startsWith('/edev/1/') && r.path !== '/edev/1/rg')
    expect(after).toEqual([])
    expect(run.client.logs.find((entry) => entry.name === 'CsipRegistrationError')).toBeDefined()
    expect(run.client.client.status()).toMatchObject({
      sites: { 'site-1': { halted: expect.stringMatching(/PIN/) } },
    })
  }, 60_000)

  test('ALL-04 client registration and PIN validation', async () => {
    expectCriteria(await runProcedure('ALL-04', { config: PIN }))
  }, 60_000)

  test('ALL-05 client response to lack of RegistrationLink', async () => {
    expectCriteria(await runProcedure('ALL-05'))
  }, 60_000)

  test('ALL-09 capabilities and settings', async () => {
    const run = await runProcedure('ALL-09')
    expectCriteria(run)
  }, 60_000)
})

describe('monitoring', () => {
  test('ALL-06 individual readings', async () => {
    const run = await runProcedure('ALL-06')
    expectCriteria(run)
    const power = run.server.readings().filter((reading) => reading.description === 'Site active power')
    expect(power.at(-1)?.value).toBe(-2500)
  }, 60_000)
})

/**
 * The csip-aus client with many sites (aggregator mode), against the in-repo utility server: what
 * it costs the server and the node's KV per site stays flat — the EndDeviceList and
 * MirrorUsagePointList are read once for all sites rather than once per site, and a poll that
 * changes nothing writes no state — while every site still registers once, gets its envelope and
 * posts its readings.
 */
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { startClient, waitUntil } from '../../test/helpers/csip-client-harness.ts'
import { CsipTestServer, makePki, type Pki } from '../../test/helpers/csip-server.ts'
import { CsipState, emptySiteState, type KeyValueStore, memoryStore } from './state.ts'

const SITES = 40

let dir: string
let pki: Pki

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'csip-scale-'))
  pki = makePki(dir)
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

/** A memory store that counts the writes of each key. */
function countingStore(): KeyValueStore & { writes: Map<string, number>; failNext: boolean } {
  const inner = memoryStore()
  const store = {
    ...inner,
    writes: new Map<string, number>(),
    failNext: false,
    put: async (key: string, value: Uint8Array) => {
      if (store.failNext) {
        store.failNext = false
        throw new Error('KV unavailable')
      }
      store.writes.set(key, (store.writes.get(key) ?? 0) + 1)
      await inner.put(key, value)
    },
  }
  return store
}

const lfdiOf = (n: number) =>
  createHash('sha256').update(`site-${n}`).digest('hex').slice(0, 40).toUpperCase()

describe('many sites', () => {
  test('lists are read once for all sites, an unchanged poll writes no state; every site registers, gets its envelope and posts', async () => {
    const server = new CsipTestServer({ pki })
    server.rates = {
      dcap_poll_seconds: 300,
      fsa_list_poll_seconds: 1,
      derp_list_poll_seconds: 1,
      der_list_poll_seconds: 1,
      mup_post_seconds: 1,
    }
    server.createProgram(0)
    server.setDefaultControl({ opModExpLimW: 5000 })
    await server.start()
    const store = countingStore()
    const sites = Object.fromEntries(
      Array.from({ length: SITES }, (_, i) => [
        `site-${i + 1}`,
        {
          lfdi: lfdiOf(i + 1),
          nmi: `41030${String(i + 1).padStart(5, '0')}`,
          meter: `meter.site-${i + 1}-meter`,
        },
      ]),
    )
    const c = startClient(server, pki, { store, config: { sites, page_size: 10 } })
    const feeding = setInterval(() => {
      for (let i = 1; i <= SITES; i++)
        c.feed({ kind: 'meter', rid: `site-${i}-meter`, q: 'power', v: 1000, t: Date.now() })
    }, 200)
    try {
      await c.client.start()
      const envelopes = () =>
        new Set(c.commands.filter((entry) => entry.command === 'limit_export').map((entry) => entry.rid))
      await waitUntil(() => envelopes().size === SITES, 20_000, 'every site under the default envelope')
      expect(server.requests.filter((r) => r.method === 'POST' && r.path === '/edev')).toHaveLength(SITES)
      // One read of each list (pages of 10) for the whole registration, not one per site.
      const listPages = (path: string) =>
        server.requests.filter((r) => r.method === 'GET' && r.path === path).length
      expect(listPages('/edev')).toBeLessThanOrEqual(3 * Math.ceil(SITES / 10))
      expect(listPages('/mup')).toBeLessThanOrEqual(3 * Math.ceil(SITES / 10))

      // Steady polling and posting: every site posts, the post rate is read about once a second
      // for all of them, and polls that find nothing new write nothing.
      await Bun.sleep(1_500)
      const writesBefore = [...store.writes.values()].reduce((a, b) => a + b, 0)
      const mupPagesBefore = listPages('/mup')
      const pollsBefore = server.requests.filter((r) => r.path.endsWith('/derc')).length
      await Bun.sleep(3_000)
      const polls = server.requests.filter((r) => r.path.endsWith('/derc')).length - pollsBefore
      expect(polls).toBeGreaterThanOrEqual(SITES)
      expect([...store.writes.values()].reduce((a, b) => a + b, 0)).toBe(writesBefore)
      expect(listPages('/mup') - mupPagesBefore).toBeLessThanOrEqual(6 * Math.ceil(SITES / 10))
      const posting = () =>
        new Set(
          server.requests
            .filter((r) => r.method === 'POST' && /^\/mup\/\d+$/.test(r.path))
            .map((r) => r.path),
        )
      await waitUntil(() => posting().size === SITES, 15_000, 'readings from every site')

      // A control still reaches every site, and a change is written again.
      server.createControl({ start: server.now(), duration: 30, base: { opModExpLimW: 1200 } })
      await waitUntil(
        () =>
          c.commands.filter((entry) => entry.command === 'limit_export' && entry.payload.v === 1200)
            .length === SITES,
        15_000,
        'the control at every site',
      )
      await c.client.stop()
      expect([...store.writes.values()].reduce((a, b) => a + b, 0)).toBeGreaterThan(writesBefore)
    } finally {
      clearInterval(feeding)
      await c.stop()
      await server.stop()
    }
  }, 60_000)
})

describe('state', () => {
  test('unchanged state is not written again; a failed write is retried by the next save', async () => {
    const store = countingStore()
    const state = new CsipState(store)
    const site = emptySiteState(lfdiOf(1))
    await state.save('site-1', site)
    await state.save('site-1', site)
    expect(store.writes.get('site.site-1')).toBe(1)
    site.endDevice = '/edev/1'
    store.failNext = true
    await expect(state.save('site-1', site)).rejects.toThrow('KV unavailable')
    await state.save('site-1', site)
    expect(store.writes.get('site.site-1')).toBe(2)
    // Loaded from KV: the same content is not written back.
    const again = new CsipState(store)
    const loaded = await again.load('site-1')
    await again.save('site-1', loaded!)
    expect(store.writes.get('site.site-1')).toBe(2)
  })
})

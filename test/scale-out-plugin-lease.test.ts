/**
 * The plugins' lease facility (`ctx.lease`) with two replicas of a node on one real
 * nats-server: a plugin's single-owner work runs on exactly one replica at a time, moves to the
 * other when its replica stops, and sees its signal abort when the lease goes.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { NatsConnection } from '@nats-io/nats-core'
import { connect } from '@nats-io/transport-node'
import { Registry } from 'prom-client'
import { afterAll, describe, expect, test } from 'vitest'
import * as z from 'zod'
import { DataPlane, LeaseManager } from '../data-plane/index.ts'
import { configSchema } from '../node/config.ts'
import { silentLogger } from '../node/logger.ts'
import { retentionLimits } from '../node/node.ts'
import {
  definePlugin,
  PluginError,
  PluginHost,
  type PluginLease,
  type PluginStore,
  type PluginStoreChange,
} from '../plugins/index.ts'
import { cleanupAll, startNatsServer, waitFor } from './helpers/node-process.ts'

afterAll(cleanupAll)

const silent = silentLogger()

/** Which replica runs the work now, and every start and stop it saw. */
const running = new Set<string>()
const starts: string[] = []
let overlap = 0

function probe(replica: string) {
  return definePlugin({
    id: 'lease-probe',
    version: '1.0.0',
    description: 'runs one poller per node, whichever replica holds its lease',
    configSchema: z.object({}),
    create: (ctx) => ({
      start: async () => {
        ctx.lease!('poller', async (lease: PluginLease) => {
          starts.push(`${replica}:${lease.fence}`)
          running.add(replica)
          if (running.size > 1) overlap += 1
          while (!lease.signal.aborted && lease.valid()) await Bun.sleep(20)
          running.delete(replica)
        })
      },
    }),
  })
}

interface Replica {
  nc: NatsConnection
  dataPlane: DataPlane
  leases: LeaseManager
  host: PluginHost
  dir: string
}

async function replica(url: string, id: string): Promise<Replica> {
  const nc = await connect({ servers: url })
  const dataPlane = new DataPlane(
    { limits: retentionLimits(configSchema.parse({})) },
    { connection: nc, logger: silent },
  )
  await dataPlane.start()
  const leases = new LeaseManager(
    { replicaId: id, termMs: 900, renewMs: 200, tickMs: 50 },
    { kv: await LeaseManager.openBucket(dataPlane.jetstream), logger: silent },
  )
  await leases.start()
  const dir = await mkdtemp(join(tmpdir(), 'oe-plugin-lease-'))
  const host = new PluginHost(
    { config: { 'lease-probe': { enabled: true } }, dir },
    { dataPlane, logger: silent, registry: new Registry(), definitions: [probe(id)], leases },
  )
  await host.start()
  return { nc, dataPlane, leases, host, dir }
}

async function stop(r: Replica): Promise<void> {
  await r.host.stop()
  await r.leases.stop()
  await r.dataPlane.stop()
  await r.nc.close()
  await rm(r.dir, { recursive: true, force: true })
}

describe('plugin lease facility', () => {
  test('single-owner work runs on one replica at a time and moves when that replica stops', async () => {
    const server = await startNatsServer()
    const a = await replica(server.url, 'ra')
    const b = await replica(server.url, 'rb')
    try {
      await waitFor(() => running.size === 1, 5_000, 'the work to start on one replica')
      await Bun.sleep(1_500)
      expect(starts).toHaveLength(1)
      const [first] = [...running]
      await stop(first === 'ra' ? a : b)
      await waitFor(() => running.size === 1 && !running.has(first!), 5_000, 'the work to move')
      expect(starts).toHaveLength(2)
      expect(overlap, starts.join(' ')).toBe(0)
      // The new owner's fence is higher than the old one's.
      const fences = starts.map((entry) => Number(entry.split(':')[1]))
      expect(fences[1]).toBeGreaterThan(fences[0]!)
    } finally {
      await Promise.allSettled([stop(a), stop(b)])
    }
  })

  test('a bad lease name is refused, naming the plugin', async () => {
    const server = await startNatsServer()
    const nc = await connect({ servers: server.url })
    const dataPlane = new DataPlane(
      { limits: retentionLimits(configSchema.parse({})) },
      { connection: nc, logger: silent },
    )
    await dataPlane.start()
    const dir = await mkdtemp(join(tmpdir(), 'oe-plugin-lease-'))
    let error: unknown
    const bad = definePlugin({
      id: 'bad-lease',
      version: '1.0.0',
      description: 'asks for a lease with a bad name',
      configSchema: z.object({}),
      create: (ctx) => {
        try {
          ctx.lease!('Bad Name', async () => {})
        } catch (caught) {
          error = caught
        }
        return {}
      },
    })
    const host = new PluginHost(
      { config: { 'bad-lease': { enabled: true } }, dir },
      { dataPlane, logger: silent, registry: new Registry(), definitions: [bad] },
    )
    try {
      await host.start()
      expect(error).toBeInstanceOf(PluginError)
      expect((error as Error).message).toContain('bad-lease')
    } finally {
      await host.stop()
      await dataPlane.stop()
      await nc.close()
      await rm(dir, { recursive: true, force: true })
    }
  })

  test('a plugin store is shared by replicas: compare-and-set and a watch of every change', async () => {
    const server = await startNatsServer()
    const stores: PluginStore[] = []
    const storeProbe = definePlugin({
      id: 'store-probe',
      version: '1.0.0',
      description: 'hands its store to the test',
      configSchema: z.object({}),
      create: (ctx) => ({
        start: async () => {
          stores.push(await ctx.store!('shared'))
        },
      }),
    })
    const parts: { nc: NatsConnection; dataPlane: DataPlane; host: PluginHost; dir: string }[] = []
    const encode = (text: string) => new TextEncoder().encode(text)
    try {
      for (let i = 0; i < 2; i++) {
        const nc = await connect({ servers: server.url })
        const dataPlane = new DataPlane(
          { limits: retentionLimits(configSchema.parse({})) },
          { connection: nc, logger: silent },
        )
        await dataPlane.start()
        const dir = await mkdtemp(join(tmpdir(), 'oe-plugin-store-'))
        const host = new PluginHost(
          { config: { 'store-probe': { enabled: true } }, dir },
          { dataPlane, logger: silent, registry: new Registry(), definitions: [storeProbe] },
        )
        await host.start()
        parts.push({ nc, dataPlane, host, dir })
      }
      const [a, b] = stores as [PluginStore, PluginStore]
      const seen: PluginStoreChange[] = []
      const watching = new AbortController()
      await b.watch!('programs.>', (change) => seen.push(change), { signal: watching.signal })

      // Create once: the second replica's create of the same key loses.
      const created = await a.create!('programs.p1', encode('v1'))
      expect(created).toBeGreaterThan(0)
      expect(await b.create!('programs.p1', encode('other'))).toBeUndefined()
      // Compare-and-set: both read revision r; one update wins, the other is told it lost.
      const entry = await b.getEntry!('programs.p1')
      expect(entry?.revision).toBe(created)
      const won = await a.update!('programs.p1', encode('v2 from a'), entry!.revision)
      const lost = await b.update!('programs.p1', encode('v2 from b'), entry!.revision)
      expect(won).toBeGreaterThan(entry!.revision)
      expect(lost).toBeUndefined()
      expect(new TextDecoder().decode((await b.get('programs.p1'))!)).toBe('v2 from a')
      // The other replica saw every change, in order; a delete has no value; other keys not at all.
      await a.put('other.key', encode('x'))
      await a.delete('programs.p1')
      await waitFor(() => seen.length >= 3, 5_000, 'three changes watched')
      expect(
        seen.map((change) => [change.key, change.value && new TextDecoder().decode(change.value)]),
      ).toEqual([
        ['programs.p1', 'v1'],
        ['programs.p1', 'v2 from a'],
        ['programs.p1', undefined],
      ])
      // After a delete the key can be created again.
      expect(await b.create!('programs.p1', encode('again'))).toBeGreaterThan(won!)
      // A watch with `initial` starts from what is there now.
      const initial: string[] = []
      await a.watch!('programs.>', (change) => initial.push(change.key), {
        signal: watching.signal,
        initial: true,
      })
      await waitFor(() => initial.length === 1, 5_000, 'the initial value')
      expect(initial).toEqual(['programs.p1'])
      watching.abort()
    } finally {
      for (const part of parts) {
        await part.host.stop()
        await part.dataPlane.stop()
        await part.nc.close()
        await rm(part.dir, { recursive: true, force: true })
      }
    }
  })
})

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
import { DataPlane, LeaseManager, type Logger } from '../data-plane/index.ts'
import { configSchema } from '../node/config.ts'
import { retentionLimits } from '../node/node.ts'
import { definePlugin, PluginError, PluginHost, type PluginLease } from '../plugins/index.ts'
import { cleanupAll, startNatsServer, waitFor } from './helpers/node-process.ts'

afterAll(cleanupAll)

const silent: Logger = {
  child: () => silent,
  trace: () => {},
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
  fatal: () => {},
} as unknown as Logger

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
      expect(overlap).toBe(0)
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
})

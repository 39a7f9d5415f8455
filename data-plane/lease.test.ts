/**
 * Leases against a real nats-server (JetStream KV): acquisition, renewal, takeover after the
 * owner stops renewing, fencing of a stale owner, contention, release, and a crashed run of the
 * same replica taking its lease back at once. Short terms keep it quick.
 */
import { jetstream } from '@nats-io/jetstream'
import type { KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/nats-core'
import { connect } from '@nats-io/transport-node'
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { silentLogger } from '../node/logger.ts'
import { cleanupAll, type NatsServerProcess, startNatsServer } from '../test/helpers/node-process.ts'
import { type Lease, LeaseLostError, LeaseManager, LeaseNameError } from './lease.ts'

const silent = silentLogger()

const TERM = 600
const RENEW = 150

let server: NatsServerProcess
const connections: NatsConnection[] = []
const managers: LeaseManager[] = []

beforeAll(async () => {
  server = await startNatsServer()
})
afterAll(cleanupAll)
afterEach(async () => {
  await Promise.allSettled(managers.splice(0).map((manager) => manager.stop()))
  await Promise.allSettled(connections.splice(0).map((nc) => nc.close()))
})

async function bucket(): Promise<{ nc: NatsConnection; kv: KV }> {
  const nc = await connect({ servers: server.url })
  connections.push(nc)
  return { nc, kv: await LeaseManager.openBucket(jetstream(nc)) }
}

async function manager(replicaId: string, kv?: KV): Promise<{ leases: LeaseManager; nc: NatsConnection }> {
  const opened = kv ? { nc: connections.at(-1)!, kv } : await bucket()
  const leases = new LeaseManager(
    { replicaId, termMs: TERM, renewMs: RENEW, tickMs: 50 },
    { kv: opened.kv, logger: silent },
  )
  await leases.start()
  managers.push(leases)
  return { leases, nc: opened.nc }
}

/** Acquire through `acquire()`, recording when it was taken and lost. */
function contend(leases: LeaseManager, name: string) {
  const record = { lease: undefined as Lease | undefined, acquiredAt: 0, lostAt: 0, acquisitions: 0 }
  leases.acquire(name, {
    onAcquired: (lease) => {
      record.lease = lease
      record.acquiredAt = Date.now()
      record.acquisitions += 1
    },
    onLost: () => {
      record.lostAt = Date.now()
    },
  })
  return record
}

async function until(check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out')
    await Bun.sleep(10)
  }
}

describe('leases (real nats-server)', () => {
  test('acquire gives a fence; renewals keep it past several terms', async () => {
    const { leases } = await manager('r1')
    const mine = contend(leases, 'work.a')
    await until(() => mine.lease !== undefined)
    const fence = mine.lease!.fence
    expect(fence).toBeGreaterThan(0)
    await Bun.sleep(TERM * 3)
    expect(mine.lease!.valid()).toBe(true)
    expect(mine.lostAt).toBe(0)
    expect(await leases.verifyFence('work.a', fence)).toBe(true)
    const [info] = leases.list()
    expect(info).toMatchObject({ name: 'work.a', owner: 'r1', fence, mine: true })
    expect(info!.renewedAgoMs).toBeLessThan(TERM)
  })

  test('another replica takes over within term + renewal after the owner stops renewing', async () => {
    const a = await manager('r1')
    const b = await manager('r2')
    const first = contend(a.leases, 'work.b')
    await until(() => first.lease !== undefined)
    const second = contend(b.leases, 'work.b')
    await Bun.sleep(TERM * 2)
    expect(second.lease, 'no takeover while the owner renews').toBeUndefined()
    // The owner is cut off from NATS: its renewals fail from now on.
    const cutAt = Date.now()
    await a.nc.close()
    await until(() => second.lease !== undefined, 5_000)
    const took = second.acquiredAt - cutAt
    expect(took).toBeLessThanOrEqual(TERM + RENEW + 200)
    // The cut-off owner stopped before the new owner started.
    expect(first.lostAt).toBeGreaterThan(0)
    expect(first.lostAt).toBeLessThanOrEqual(second.acquiredAt)
    expect(first.lease!.signal.aborted).toBe(true)
    expect(second.lease!.fence).toBeGreaterThan(first.lease!.fence)
  })

  test("a stale owner's fence is refused", async () => {
    const a = await manager('r1')
    const b = await manager('r2')
    const first = contend(a.leases, 'work.c')
    await until(() => first.lease !== undefined)
    const stale = first.lease!
    await a.nc.close()
    const second = contend(b.leases, 'work.c')
    await until(() => second.lease !== undefined)
    expect(stale.valid()).toBe(false)
    expect(() => stale.check()).toThrow(LeaseLostError)
    expect(await b.leases.verifyFence('work.c', stale.fence)).toBe(false)
    expect(await b.leases.verifyFence('work.c', second.lease!.fence)).toBe(true)
  })

  test('two managers contending never both hold the lease', async () => {
    const { kv } = await bucket()
    const a = await manager('r1', kv)
    const b = await manager('r2', kv)
    const first = contend(a.leases, 'work.d')
    const second = contend(b.leases, 'work.d')
    let both = 0
    let held = 0
    const deadline = Date.now() + TERM * 4
    let flipped = false
    while (Date.now() < deadline) {
      const aValid = first.lease?.valid() ?? false
      const bValid = second.lease?.valid() ?? false
      if (aValid && bValid) both += 1
      if (aValid || bValid) held += 1
      // Halfway, the holder gives the lease up: the other must take it, still never both.
      if (!flipped && Date.now() > deadline - TERM * 2 && (aValid || bValid)) {
        flipped = true
        void (aValid ? a.leases : b.leases).release('work.d')
      }
      await Bun.sleep(5)
    }
    expect(both).toBe(0)
    expect(held).toBeGreaterThan(0)
    expect(first.acquisitions + second.acquisitions).toBe(2)
  })

  test('a released lease is taken at once, not after a term', async () => {
    const a = await manager('r1')
    const b = await manager('r2')
    const first = contend(a.leases, 'work.e')
    await until(() => first.lease !== undefined)
    const second = contend(b.leases, 'work.e')
    await Bun.sleep(TERM * 2)
    const releasedAt = Date.now()
    await a.leases.release('work.e')
    await until(() => second.lease !== undefined)
    expect(second.acquiredAt - releasedAt).toBeLessThan(TERM)
  })

  test('a crashed run of the same replica is taken over at once by its next run', async () => {
    const first = await manager('r1')
    const lease = await first.leases.tryAcquire('work.f')
    expect(lease).toBeDefined()
    await first.nc.close()
    const next = await manager('r1')
    const other = await manager('r2')
    expect(await other.leases.tryAcquire('work.f')).toBeUndefined()
    const taken = await next.leases.tryAcquire('work.f')
    expect(taken?.fence).toBeGreaterThan(lease!.fence)
  })

  test('free leases go to the replica holding fewer', async () => {
    const { kv } = await bucket()
    const a = await manager('r1', kv)
    const b = await manager('r2', kv)
    for (let i = 0; i < 6; i++) expect(await a.leases.tryAcquire(`busy.${i}`)).toBeDefined()
    const fromA = contend(a.leases, 'work.g')
    const fromB = contend(b.leases, 'work.g')
    await until(() => fromA.lease !== undefined || fromB.lease !== undefined)
    expect(fromB.lease).toBeDefined()
    expect(fromA.lease).toBeUndefined()
  })

  test('a bad lease name is refused by name', async () => {
    const { leases } = await manager('r1')
    expect(() => leases.acquire('bad name', { onAcquired: () => {} })).toThrow(LeaseNameError)
    await expect(leases.tryAcquire('a..b')).rejects.toThrow(LeaseNameError)
  })
})

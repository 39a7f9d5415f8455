/**
 * A flapping link and a slow peer, between two organisations in two network namespaces (root:
 * test/helpers/netns.ts). The provider ingests meter readings with unique values over HTTP at
 * a steady rate throughout (a few thousand records a second), while:
 * 1. the link between the hosts goes down for 3 s and up for 3 s, over and over, for a minute;
 * 2. then for 20 s the link is a slow one (a 1 Mbit/s token bucket each way, `tc tbf`: this
 *    kernel has no netem) and the consumer reads slowly (its process is stopped 300 ms of every
 *    500 ms), so a backlog builds up at the provider;
 * 3. then the link is lifted and the feed stops.
 * Asserted: records flowed during the flapping and resumed after it, the backlog built during
 * the slow phase and was delivered after it; the consumer then holds exactly what the provider
 * stored (nothing lost, nothing twice, in order per resource); and the resident memory of both
 * nodes and both nats-servers stayed bounded: each below its level after warm-up plus 160 MiB,
 * and not rising through the second half of the flapping by more than 64 MiB.
 */
import { afterAll, describe, expect, test } from 'vitest'
import { createLab, type NetnsLab, type NetnsPair, startPairIn } from '../helpers/netns.ts'
import { cleanupAll, waitFor } from '../helpers/node-process.ts'
import { compare, flowOf, PROVIDER_ALIAS, ranges, valuesOn } from '../helpers/transfer.ts'
import { logTail, MemorySampler, TimedFeeder } from './lib.ts'

const FLAP_MS = 60_000
const SLOW_MS = 20_000
/** Over warm-up, what each process's RSS may grow by at most; and through the flapping's second half. */
const GROWTH_BOUND_MIB = 160
const DRIFT_BOUND_MIB = 64

describe('a flapping link and a slow peer', () => {
  let lab: NetnsLab | undefined
  let pair: NetnsPair | undefined

  afterAll(async () => {
    await cleanupAll()
    lab?.destroy()
  })

  test('memory stays bounded, the flow resumes, and nothing is lost or duplicated', async () => {
    const netns = createLab('f')
    lab = netns
    pair = await startPairIn(netns)
    const { provider, consumer, id } = pair
    const received = async () => (await flowOf(consumer, id)).recordsIn
    const feeder = new TimedFeeder(provider, { batch: 500, pauseMs: 100 }).start()
    const memory = new MemorySampler({ provider, consumer }).start()
    await waitFor(async () => (await received()) > 5_000, 20_000, 'records to reach the consumer')
    const warmedAt = Date.now()
    const warm = memory.at(warmedAt)

    // 1. Flapping: count what arrived during the up periods, and sessions.
    const flapStart = Date.now()
    const heldAtStart = await received()
    const sessionsBefore = (await flowOf(provider, id)).sessions
    const cuts = await netns.flap({ downMs: 3_000, upMs: 3_000, forMs: FLAP_MS })
    const flapEnd = Date.now()
    const heldAtFlapEnd = await received()
    const acceptedAtFlapEnd = feeder.accepted.size
    // The flow resumes once the link stays up: within 30 s the consumer holds what was accepted then.
    let resumedMs: number | undefined
    while (Date.now() - flapEnd < 30_000) {
      if ((await received().catch(() => 0)) >= acceptedAtFlapEnd) {
        resumedMs = Date.now() - flapEnd
        break
      }
      await Bun.sleep(100)
    }
    const sessionsAfterFlap = (await flowOf(provider, id)).sessions

    // 2. Slow link, slow reader.
    netns.shape('a', '1mbit')
    netns.shape('b', '1mbit')
    const slowStart = Date.now()
    const heldAtSlowStart = await received()
    const acceptedAtSlowStart = feeder.accepted.size
    const pid = consumer.process.pid!
    try {
      while (Date.now() - slowStart < SLOW_MS) {
        process.kill(pid, 'SIGSTOP')
        await Bun.sleep(300)
        process.kill(pid, 'SIGCONT')
        await Bun.sleep(200)
      }
    } finally {
      process.kill(pid, 'SIGCONT')
    }
    const heldAtSlowEnd = await received()
    const acceptedAtSlowEnd = feeder.accepted.size
    const providerFlowSlow = await flowOf(provider, id)
    netns.shape('a', undefined)
    netns.shape('b', undefined)

    // 3. The feed stops; the consumer catches up.
    await feeder.stop()
    const liftedAt = Date.now()
    let caughtUpMs: number | undefined
    while (Date.now() - liftedAt < 60_000) {
      if ((await received().catch(() => 0)) >= feeder.accepted.size) {
        caughtUpMs = Date.now() - liftedAt
        break
      }
      await Bun.sleep(200)
    }
    // Late duplicates would show as the count moving on; let it settle.
    await Bun.sleep(1_500)
    memory.stop()
    const stored = await valuesOn(provider, 'oe.tel.meter.*.power')
    const got = await valuesOn(consumer, `oe.peer.${PROVIDER_ALIAS}.tel.meter.*.power`)
    const result = compare(feeder.accepted, stored, got)
    const duplicates = result.duplicated.reduce((sum, [, n]) => sum + n - 1, 0)
    const feedS = (liftedAt - warmedAt) / 1000
    const peak = memory.max()
    const halfway = memory.at(flapStart + FLAP_MS / 2)
    const end = memory.at(flapEnd)
    const final = memory.at(Date.now())
    const fmt = (values: Record<string, number | undefined>) =>
      Object.entries(values)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')
    console.log(
      `[flapping link + slow peer] fed ${feeder.sent} records (${Math.round(feeder.accepted.size / ((liftedAt - flapStart + 3_000) / 1000))} records/s), ` +
        `accepted ${feeder.accepted.size}, uncertain ${feeder.uncertain.size}; flapping ${FLAP_MS / 1000} s, ${cuts} cuts of 3 s: ` +
        `consumer went from ${heldAtStart} to ${heldAtFlapEnd} during it, sessions ${sessionsBefore} → ${sessionsAfterFlap}, ` +
        `level with the provider ${resumedMs} ms after; slow ${SLOW_MS / 1000} s: consumer +${heldAtSlowEnd - heldAtSlowStart}, ` +
        `provider accepted +${acceptedAtSlowEnd - acceptedAtSlowStart} (backlog ${acceptedAtSlowEnd - heldAtSlowEnd}, ` +
        `in flight ${providerFlowSlow.lagRecords}); caught up ${caughtUpMs} ms after the link was lifted; provider stored ` +
        `${stored.length}, consumer holds ${got.length}: lost ${result.lost.length}, duplicates ${duplicates}, unexpected ` +
        `${result.unexpected.length}, out of order ${result.outOfOrder.length}, lost at the provider ${result.lostAtProvider.length}; ` +
        `RSS MiB after warm-up {${fmt(warm)}}, flapping halfway {${fmt(halfway)}}, flapping end {${fmt(end)}}, ` +
        `peak {${fmt(peak)}}, end {${fmt(final)}}; ingest errors ${feeder.errors.slice(0, 3).join(' | ') || 'none'} (over ${feedS} s)`,
    )
    const bad =
      result.lost.length + result.duplicated.length + result.unexpected.length + result.outOfOrder.length
    if (bad > 0 || caughtUpMs === undefined) {
      console.log(
        [
          `lost: ${ranges(result.lost)}`,
          `duplicated: ${ranges(result.duplicated.map(([v]) => v))}`,
          `unexpected: ${ranges(result.unexpected)}`,
          logTail('provider', provider),
          logTail('consumer', consumer),
        ].join('\n'),
      )
    }

    expect(feeder.errors).toEqual([])
    // Records moved while the link flapped (in its up periods), and the flow resumed after it.
    expect(cuts).toBeGreaterThanOrEqual(9)
    expect(heldAtFlapEnd - heldAtStart).toBeGreaterThan(10_000)
    expect(resumedMs, 'the consumer level with the provider after the flapping').toBeDefined()
    // The slow phase held a backlog back, which arrived once the link was lifted.
    expect(acceptedAtSlowEnd - heldAtSlowEnd).toBeGreaterThan(5_000)
    expect(caughtUpMs, 'the backlog delivered after the slow phase').toBeDefined()
    expect(caughtUpMs!).toBeLessThan(60_000)
    // Exactly once, in order.
    expect(new Set(stored.map((m) => m.v)).size).toBe(stored.length)
    expect({
      lost: ranges(result.lost),
      duplicated: ranges(result.duplicated.map(([v]) => v)),
      unexpected: ranges(result.unexpected),
      lostAtProvider: ranges(result.lostAtProvider),
      outOfOrder: result.outOfOrder.slice(0, 5),
    }).toEqual({ lost: '', duplicated: '', unexpected: '', lostAtProvider: '', outOfOrder: [] })
    // Memory bounded: no process grew by more than the bound over its warm-up level, and none
    // kept rising through the second half of the flapping.
    for (const [label, value] of Object.entries(peak)) {
      const base = warm[label]
      expect(base, `${label} sampled after warm-up`).toBeDefined()
      expect(value - base!, `${label} RSS growth over warm-up (MiB)`).toBeLessThan(GROWTH_BOUND_MIB)
      const mid = halfway[label]
      const last = end[label]
      if (mid !== undefined && last !== undefined)
        expect(last - mid, `${label} RSS drift through the flapping's second half (MiB)`).toBeLessThan(
          DRIFT_BOUND_MIB,
        )
    }
  }, 180_000)
})

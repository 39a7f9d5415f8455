/**
 * Clock skew of ±5 minutes between organisations. A provider on the host's clock, one consumer
 * whose wall clock runs 5 minutes ahead and one 5 minutes behind (libfaketime: the node and its
 * CLI see the shifted time; timers and the embedded nats-server keep the host's). The provider
 * offers each consumer agreements over separate resources, so each agreement's records are
 * counted on their own, while it ingests readings for all of them throughout.
 *
 * The design (ARCHITECTURE §6) has no skew tolerance: each party judges the validity window on
 * its own clock, the provider before every batch and the consumer on every batch. So what each
 * side *shows* differs by the skew at each edge, and data moves only while both judge the
 * agreement active: the effective window is the intersection of the two. Revocation is a signed
 * statement and does not depend on either clock. Asserted here, per agreement:
 * - valid from now + 2 min: nothing is sent and nothing received before the provider's start;
 *   each side shows the state its own clock gives;
 * - valid from the provider's "now": the consumer 5 minutes behind shows it `accepted` (not yet
 *   started) and refuses every session for 5 minutes; nothing flows (the provider retries each
 *   second, with a warning each time);
 * - ending in 20 s on the clock that reaches the end first (the provider's, or the ahead
 *   consumer's): the flow stops within about 1 s of that moment, nothing stamped after it
 *   arrives, everything stored before it arrived once;
 * - an agreement shorter than the skew cannot be accepted by the side ahead (it has ended there);
 * - revoked by the ahead or the behind consumer: both sides show it revoked within 2 s and the
 *   flow stops; what came before arrived exactly once.
 */
import { afterAll, describe, expect, test } from 'vitest'
import { type AuditLine, api, auditEntries, peer, waitAgreementState } from '../helpers/federation.ts'
import { cleanupAll, type RunningNode, readSubject, startNode, waitFor } from '../helpers/node-process.ts'
import { flowOf } from '../helpers/transfer.ts'
import { logTail, shiftedClockEnv, tally } from './lib.ts'

const SKEW_MS = 5 * 60_000
const PROV = 'prov'

afterAll(cleanupAll)

/** Readings for several resources, posted to the provider ten times a second, values unique. */
class MultiFeeder {
  /** Per rid, the readings the provider answered 200 for (all accepted). */
  readonly stored = new Map<string, { v: number; t: number }[]>()
  readonly errors: string[] = []
  private next = 0
  private stopped = false
  private running: Promise<void> | undefined

  constructor(
    private readonly node: RunningNode,
    private readonly rids: readonly string[],
    private readonly perRid = 10,
  ) {
    for (const rid of rids) this.stored.set(rid, [])
  }

  start(): this {
    this.running ??= this.loop()
    return this
  }

  async stop(): Promise<void> {
    this.stopped = true
    await this.running
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      const t = Date.now()
      const batch = this.rids.flatMap((rid) =>
        Array.from({ length: this.perRid }, (_, i) => ({
          kind: 'meter',
          rid,
          q: 'power',
          v: this.next++,
          t: t + i,
        })),
      )
      try {
        const response = await this.node.fetch('/v1/telemetry', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(batch),
          signal: AbortSignal.timeout(10_000),
        })
        const text = await response.text()
        if (response.ok && (JSON.parse(text) as { accepted: number }).accepted === batch.length)
          for (const record of batch) this.stored.get(record.rid)!.push({ v: record.v, t: record.t })
        else this.errors.push(`${response.status} ${text.slice(0, 200)}`)
      } catch (error) {
        this.errors.push((error as Error).message)
      }
      await Bun.sleep(100)
    }
  }
}

interface Offer {
  rid: string
  id: string
  consumer: RunningNode
  label: string
}

describe('clock skew of ±5 minutes between provider and consumers', () => {
  test('validity edges, expiry and revocation: data moves only while both sides judge the agreement active', async () => {
    const [provider, ahead, behind] = await Promise.all([
      startNode({ config: 'org = "Provider"\n' }),
      startNode({ config: 'org = "Ahead"\n', env: shiftedClockEnv('+5m') }),
      startNode({ config: 'org = "Behind"\n', env: shiftedClockEnv('-5m') }),
    ])
    // The shift took: each node's clock, as the Date header of its API says, is off by the skew.
    const clockOf = async (node: RunningNode) => {
      const response = await node.fetch('/v1/status')
      return Date.parse(response.headers.get('date') ?? '') - Date.now()
    }
    const offsets = { ahead: await clockOf(ahead), behind: await clockOf(behind) }
    expect(Math.abs(offsets.ahead - SKEW_MS), `ahead clock offset ${offsets.ahead} ms`).toBeLessThan(2_000)
    expect(Math.abs(offsets.behind + SKEW_MS), `behind clock offset ${offsets.behind} ms`).toBeLessThan(2_000)

    await Promise.all([peer(provider, 'ahead', ahead, PROV), peer(provider, 'behind', behind, PROV)])

    const t0 = Date.now()
    const offer = async (
      label: string,
      rid: string,
      consumer: RunningNode,
      window: { from?: number; until: number },
    ): Promise<Offer> => {
      const { id } = await api<{ id: string }>(provider, 'POST', '/v1/agreements', {
        peer: consumer === ahead ? 'ahead' : 'behind',
        grants: [`telemetry:kinds=meter;rids=${rid};quantities=power`],
        purpose: `clock skew: ${label}`,
        ...(window.from === undefined ? {} : { validFrom: new Date(window.from).toISOString() }),
        validUntil: new Date(window.until).toISOString(),
        offer: true,
      })
      return { rid, id, consumer, label }
    }
    const DAY = 86_400_000
    const END = t0 + 20_000
    const offers = {
      startAhead: await offer('starts in 2 min, consumer ahead', 'sa', ahead, {
        from: t0 + 120_000,
        until: t0 + DAY,
      }),
      startBehind: await offer('starts in 2 min, consumer behind', 'sb', behind, {
        from: t0 + 120_000,
        until: t0 + DAY,
      }),
      // Valid from the provider's "now": 5 minutes in the future on the behind consumer's clock.
      nowBehind: await offer('starts now, consumer behind', 'nb', behind, { until: t0 + DAY }),
      // Ends in 20 s on the provider's clock: the provider reaches the end first. (Started 6 min
      // ago, so that the consumer behind sees it started too.)
      endBehind: await offer('ends in 20 s, consumer behind', 'eb', behind, {
        from: t0 - 6 * 60_000,
        until: END,
      }),
      // Ends in 20 s on the ahead consumer's clock (5 min 20 s on the provider's).
      endAhead: await offer('ends in 20 s on the ahead clock', 'ea', ahead, { until: END + SKEW_MS }),
      // 20 s on the provider's clock is 4 min 40 s in the past on the ahead consumer's.
      shortAhead: await offer('20 s long, consumer ahead', 'xa', ahead, { until: END }),
      revokeAhead: await offer('revoked by the consumer ahead', 'ra', ahead, { until: t0 + DAY }),
      revokeBehind: await offer('revoked by the consumer behind', 'rb', behind, {
        from: t0 - 6 * 60_000,
        until: t0 + DAY,
      }),
    }
    const all = Object.values(offers)
    const signable = all.filter((o) => o !== offers.shortAhead)
    await Promise.all(signable.map((o) => waitAgreementState(o.consumer, o.id, 'proposed')))

    // The side ahead has already seen the short one end: it refuses the offer, and the provider
    // is told why.
    let refusal: AuditLine | undefined
    await waitFor(
      async () => {
        refusal = (await auditEntries(provider)).find(
          (e) => e.type === 'agreement.delivery_refused' && e.data.peer === 'ahead',
        )
        return refusal !== undefined
      },
      10_000,
      'the ahead consumer to refuse the short offer',
    )
    expect(refusal!.data).toMatchObject({ type: 'propose', error: 'AgreementExpiredError' })
    expect((await ahead.fetch(`/v1/agreements/${offers.shortAhead.id}`)).status).toBe(404)

    for (const o of signable) await api(o.consumer, 'POST', `/v1/agreements/${o.id}/accept`)
    const stateOf = async (node: RunningNode, o: Offer) =>
      (await api<{ state: string }>(node, 'GET', `/v1/agreements/${o.id}`)).state
    for (const o of [offers.endBehind, offers.endAhead, offers.revokeAhead, offers.revokeBehind]) {
      await waitAgreementState(provider, o.id, 'active')
      await waitAgreementState(o.consumer, o.id, 'active')
    }
    // Before its start each side shows what its own clock says: the provider and the consumer
    // behind are not there yet; the consumer 5 minutes ahead is 3 minutes past the start.
    await waitAgreementState(provider, offers.startAhead.id, 'accepted')
    await waitAgreementState(provider, offers.startBehind.id, 'accepted')
    expect(await stateOf(behind, offers.startBehind)).toBe('accepted')
    expect(await stateOf(ahead, offers.startAhead)).toBe('active')
    expect(await stateOf(provider, offers.shortAhead)).toBe('proposed')
    // Starting at the provider's "now", the behind consumer sees it start in 5 minutes.
    await waitAgreementState(provider, offers.nowBehind.id, 'active')
    await waitAgreementState(behind, offers.nowBehind.id, 'accepted')

    const feeder = new MultiFeeder(
      provider,
      all.map((o) => o.rid),
    ).start()
    const held = async (o: Offer) => {
      const messages = await readSubject(o.consumer, `oe.peer.${PROV}.tel.meter.${o.rid}.power`, 1_000)
      return messages.map((m) => ({ v: m.data.v as number, t: m.data.t as number }))
    }
    // (Counted from the flows while records move: a tail read ends only once they stop.)
    const flowing = async (o: Offer) => (await flowOf(o.consumer, o.id)).recordsIn >= 300
    await waitFor(
      async () => (await flowing(offers.revokeAhead)) && (await flowing(offers.revokeBehind)),
      15_000,
      'records to flow to both consumers',
    )

    // Revocations by either consumer: both sides show them within 2 s, whatever the clocks.
    const revokedAt = Date.now()
    await Promise.all([
      api(ahead, 'POST', `/v1/agreements/${offers.revokeAhead.id}/revoke`, { reason: 'skew test' }),
      api(behind, 'POST', `/v1/agreements/${offers.revokeBehind.id}/revoke`, { reason: 'skew test' }),
    ])
    await Promise.all([
      waitAgreementState(provider, offers.revokeAhead.id, 'revoked', 2_000),
      waitAgreementState(provider, offers.revokeBehind.id, 'revoked', 2_000),
    ])
    const revocationSeenMs = Date.now() - revokedAt

    // The ends: the provider's clock ends `endBehind` at END, the ahead clock ends `endAhead` at
    // END too (in host time). Watch both sides and the flows around that moment.
    await waitFor(() => Date.now() >= END - 3_000, 40_000, 'shortly before the end')
    const before = {
      endBehind: (await flowOf(behind, offers.endBehind.id)).recordsIn,
      endAhead: (await flowOf(ahead, offers.endAhead.id)).recordsIn,
    }
    let providerExpiredAt: number | undefined
    let aheadExpiredAt: number | undefined
    while (Date.now() < END + 5_000) {
      const now = Date.now()
      if (providerExpiredAt === undefined && (await stateOf(provider, offers.endBehind)) === 'expired')
        providerExpiredAt = now
      if (aheadExpiredAt === undefined && (await stateOf(ahead, offers.endAhead)) === 'expired')
        aheadExpiredAt = now
      await Bun.sleep(50)
    }
    const states = {
      endBehind: {
        provider: await stateOf(provider, offers.endBehind),
        consumer: await stateOf(behind, offers.endBehind),
      },
      endAhead: {
        provider: await stateOf(provider, offers.endAhead),
        consumer: await stateOf(ahead, offers.endAhead),
      },
    }
    const flowsAfterEnd = {
      endBehind: await flowOf(behind, offers.endBehind.id),
      endAhead: await flowOf(ahead, offers.endAhead.id),
      providerEndAhead: await flowOf(provider, offers.endAhead.id),
    }
    await Bun.sleep(2_000)
    const laterIn = {
      endBehind: (await flowOf(behind, offers.endBehind.id)).recordsIn,
      endAhead: (await flowOf(ahead, offers.endAhead.id)).recordsIn,
    }
    await feeder.stop()
    await Bun.sleep(1_000)

    // Per agreement: what arrived, against what the provider stored in its effective window.
    const count = async (o: Offer, from: number, until: number, slackMs: number) => {
      const got = await held(o)
      const stored = feeder.stored.get(o.rid)!
      const surely = stored.filter((r) => r.t >= from && r.t < until - slackMs).map((r) => r.v)
      const maybe = new Set(stored.filter((r) => r.t >= from && r.t < until + slackMs).map((r) => r.v))
      const result = tally(
        surely,
        got.map((r) => r.v),
      )
      return {
        ...result,
        stored: stored.length,
        lateOrUnexpected: got.filter((r) => !maybe.has(r.v)).length,
        lastT: got.reduce((max, r) => Math.max(max, r.t), 0),
      }
    }
    const counts = {
      startAhead: await count(offers.startAhead, 0, 0, 0),
      startBehind: await count(offers.startBehind, 0, 0, 0),
      nowBehind: await count(offers.nowBehind, 0, 0, 0),
      endBehind: await count(offers.endBehind, 0, END, 1_000),
      endAhead: await count(offers.endAhead, 0, END, 1_500),
      revokeAhead: await count(offers.revokeAhead, 0, revokedAt, 1_000),
      revokeBehind: await count(offers.revokeBehind, 0, revokedAt, 1_000),
    }
    const warnLines = (node: RunningNode) =>
      node
        .stderr()
        .split('\n')
        .filter((l) => l.includes('"level":40')).length
    const refusedSessions = provider
      .stderr()
      .split('\n')
      .filter((l) => l.includes(offers.nowBehind.id) && l.includes('refused the session')).length
    const nowBehindStates = {
      provider: await stateOf(provider, offers.nowBehind),
      consumer: await stateOf(behind, offers.nowBehind),
    }
    console.log(
      `[clock skew ±5 min] offsets ahead ${offsets.ahead} ms, behind ${offsets.behind} ms; revocations seen by the ` +
        `provider within ${revocationSeenMs} ms; provider judged 'ends in 20 s' expired ${providerExpiredAt === undefined ? 'never' : `${providerExpiredAt - END} ms`} after the end, ` +
        `the ahead consumer judged its one expired ${aheadExpiredAt === undefined ? 'never' : `${aheadExpiredAt - END} ms`} after; states after the end ${JSON.stringify(states)}; ` +
        `records in at end-3 s ${JSON.stringify(before)}, after ${JSON.stringify(laterIn)}; sessions after the end ` +
        `behind ${flowsAfterEnd.endBehind.session} ahead ${flowsAfterEnd.endAhead.session} provider→ahead ${flowsAfterEnd.providerEndAhead.session} ` +
        `(${flowsAfterEnd.providerEndAhead.lastError}); counts ${JSON.stringify(counts)}; warn lines provider ${warnLines(provider)} ` +
        `ahead ${warnLines(ahead)} behind ${warnLines(behind)}; 'starts now' to the consumer behind: states ${JSON.stringify(nowBehindStates)}, ` +
        `sessions refused ${refusedSessions} in ${Math.round((Date.now() - t0) / 1000)} s; ingest errors ${feeder.errors.slice(0, 3).join(' | ') || 'none'}`,
    )
    if (Object.values(counts).some((c) => c.lost + c.duplicated + c.lateOrUnexpected > 0))
      console.log(
        [logTail('provider', provider), logTail('ahead', ahead), logTail('behind', behind)].join('\n'),
      )

    expect(feeder.errors).toEqual([])
    // Before the provider's start nothing moved, whatever the ahead consumer shows.
    expect(counts.startAhead.held).toBe(0)
    expect(counts.startBehind.held).toBe(0)
    expect(counts.startAhead.stored).toBeGreaterThan(0)
    // Nor while the consumer's clock has not reached the start: it refuses the sessions.
    expect(counts.nowBehind.held).toBe(0)
    expect(nowBehindStates).toEqual({ provider: 'active', consumer: 'accepted' })
    expect((await flowOf(provider, offers.startAhead.id)).recordsOut).toBe(0)
    expect(await stateOf(provider, offers.startAhead)).toBe('accepted')
    // Each end came on the clock that reached it first, within about a second, and the other
    // side still shows the agreement active (its clock is 5 minutes from the end).
    expect(providerExpiredAt, 'the provider judged the agreement expired').toBeDefined()
    expect(providerExpiredAt! - END).toBeLessThanOrEqual(1_500)
    expect(aheadExpiredAt, 'the ahead consumer judged its agreement expired').toBeDefined()
    expect(aheadExpiredAt! - END).toBeLessThanOrEqual(1_500)
    expect(states).toEqual({
      endBehind: { provider: 'expired', consumer: 'active' },
      endAhead: { provider: 'active', consumer: 'expired' },
    })
    // …and the flow stopped all the same: no session, nothing more arriving.
    expect(flowsAfterEnd.endBehind.session).toBe(false)
    expect(flowsAfterEnd.endAhead.session).toBe(false)
    expect(laterIn).toEqual({
      endBehind: flowsAfterEnd.endBehind.recordsIn,
      endAhead: flowsAfterEnd.endAhead.recordsIn,
    })
    // Exactly once up to each end or revocation, nothing stamped after it.
    for (const [name, c] of Object.entries(counts)) {
      expect({ name, lost: c.lost, duplicated: c.duplicated, late: c.lateOrUnexpected }).toEqual({
        name,
        lost: 0,
        duplicated: 0,
        late: 0,
      })
    }
    expect(counts.endBehind.held).toBeGreaterThan(1_000)
    expect(counts.endAhead.held).toBeGreaterThan(1_000)
    expect(counts.endBehind.lastT).toBeLessThan(END)
    expect(revocationSeenMs).toBeLessThanOrEqual(2_000)
    expect(await stateOf(ahead, offers.revokeAhead)).toBe('revoked')
    expect(await stateOf(behind, offers.revokeBehind)).toBe('revoked')
  }, 90_000)
})

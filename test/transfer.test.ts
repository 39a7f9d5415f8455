/**
 * Data crossing organisations under agreements, between real node processes: exactly what is
 * granted arrives (counted, in order, once), projections and intervals hold, revocation stops
 * the flow, and control commands go the other way only as granted.
 */

import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import { connect } from '@nats-io/transport-node'
import { encode as encodeCbor } from 'cbor-x'
import { afterEach, describe, expect, test } from 'vitest'
import { decodeCbor } from '../data-plane/index.ts'
import { api, auditEntries, peer, waitAgreementState } from './helpers/federation.ts'
import {
  cleanupAll,
  metricValue,
  type RunningNode,
  readSubject,
  runCli,
  scrapeMetric,
  startNode,
  waitFor,
} from './helpers/node-process.ts'
import { flowOf, natsOf, natsServerPid } from './helpers/transfer.ts'

afterEach(cleanupAll)

/** The consumer asks the provider (peered as `prov`/`cons`) for `grants`; the provider accepts. */
async function agree(
  provider: RunningNode,
  consumer: RunningNode,
  grants: string[],
  extra: Record<string, unknown> = {},
): Promise<string> {
  const { id } = await api<{ id: string }>(consumer, 'POST', '/v1/agreements', {
    peer: 'prov',
    grants,
    purpose: 'transfer test',
    validUntil: new Date(Date.now() + 86_400_000).toISOString(),
    ...extra,
  })
  await waitAgreementState(provider, id, 'proposed')
  await api(provider, 'POST', `/v1/agreements/${id}/accept`)
  await waitAgreementState(consumer, id, 'active')
  return id
}

/** Provider and consumer, peered; the consumer asks for `grants`; the provider accepts. */
async function setup(
  grants: string[],
  extra: Record<string, unknown> = {},
  providerConfig = '',
): Promise<{ provider: RunningNode; consumer: RunningNode; id: string }> {
  const [provider, consumer] = await Promise.all([
    startNode({ config: `org = "Provider"\n${providerConfig}` }),
    startNode({ config: 'org = "Consumer"\n' }),
  ])
  await peer(consumer, 'prov', provider, 'cons')
  return { provider, consumer, id: await agree(provider, consumer, grants, extra) }
}

/** The `agreement` label of the federation metrics: the id's first 16 characters. */
const agreementLabel = (id: string): string => id.slice(0, 16)

async function ingest(node: RunningNode, records: object[]): Promise<void> {
  for (let i = 0; i < records.length; i += 1000) {
    const result = await api<{ accepted: number; rejected: number }>(
      node,
      'POST',
      '/v1/telemetry',
      records.slice(i, i + 1000),
    )
    expect(result.rejected).toBe(0)
  }
}

async function flowIn(node: RunningNode, id: string): Promise<number> {
  return (await api<{ flow: { recordsIn: number } }>(node, 'GET', `/v1/agreements/${id}`)).flow.recordsIn
}

describe('scope', () => {
  test('10,000 in-scope records arrive exactly once and in order; 1,000 out-of-scope never do', async () => {
    const { provider, consumer, id } = await setup([
      'telemetry:kinds=evse;rids=CS1-1,CS1-2,CS1-3,CS1-4;quantities=power,energy_import',
    ])
    const t0 = Date.now() - 600_000
    const records: object[] = []
    // What the batches must carry at least: the subject (after `oe.`) of every in-scope record.
    let subjectBytes = 0
    for (let i = 0; i < 10_000; i++) {
      const rid = `CS1-${(i % 4) + 1}`
      const q = i % 2 ? 'power' : 'energy_import'
      records.push({ kind: 'evse', rid, q, v: i, t: t0 + i })
      subjectBytes += `tel.evse.${rid}.${q}`.length
      if (i % 10 === 0) {
        // Out of scope, each with a value below 0 (never -0, which equals 0), in between the others.
        const wrong = (i / 10) % 3
        const v = -(i + 1)
        records.push(
          wrong === 0
            ? { kind: 'station', rid: 'CS1-1', q: 'power', v, t: t0 + i }
            : wrong === 1
              ? { kind: 'evse', rid: 'CS1-1', q: 'voltage', v, t: t0 + i }
              : { kind: 'evse', rid: 'CS9-1', q: 'power', v, t: t0 + i },
        )
      }
    }
    expect(records).toHaveLength(11_000)
    await ingest(provider, records)
    await waitFor(async () => (await flowIn(consumer, id)) >= 10_000, 30_000, '10,000 records to arrive')
    const received = await readSubject(consumer, 'oe.peer.prov.>', 1_500)
    expect(received).toHaveLength(10_000)
    const values = received.map((m) => m.data.v as number)
    expect(new Set(values).size).toBe(10_000)
    expect(values.every((v) => v >= 0)).toBe(true)
    for (const rid of ['CS1-1', 'CS1-2', 'CS1-3', 'CS1-4']) {
      const ordered = received.filter((m) => m.subject.includes(`.${rid}.`)).map((m) => m.data.v as number)
      expect(ordered).toEqual([...ordered].sort((a, b) => a - b))
    }
    expect(received[0]!.subject).toMatch(/^oe\.peer\.prov\.tel\.evse\.CS1-[1-4]\.(power|energy_import)$/)
    const detail = await api<{ flow: { recordsOut: number } }>(provider, 'GET', `/v1/agreements/${id}`)
    expect(detail.flow.recordsOut).toBe(10_000)
    const metrics = await (await provider.fetch('/metrics', { token: null })).text()
    expect(metrics).toContain(`oe_federation_records{agreement="${id.slice(0, 16)}",direction="out"} 10000`)
    const consumerMetrics = await (await consumer.fetch('/metrics', { token: null })).text()
    expect(consumerMetrics).toContain(
      `oe_federation_records{agreement="${id.slice(0, 16)}",direction="in"} 10000`,
    )
    expect(consumerMetrics).toMatch(/^oe_federation_peers_connected 1$/m)
    // Bytes grow with the data: the bodies the consumer took hold every record's subject at
    // least, and the provider's frames are those bodies signed.
    const label = agreementLabel(id)
    const bytesIn = metricValue(consumerMetrics, 'oe_federation_bytes', { agreement: label, direction: 'in' })
    const bytesOut = metricValue(metrics, 'oe_federation_bytes', { agreement: label, direction: 'out' })
    expect(bytesIn).toBeGreaterThan(subjectBytes)
    expect(bytesOut).toBeGreaterThanOrEqual(bytesIn!)
    // Each node's round trip to the other, in seconds. libp2p's ping counts whole milliseconds,
    // so a loopback ping may read 0: wait for one that does not.
    for (const [node, alias] of [
      [provider, 'cons'],
      [consumer, 'prov'],
    ] as const) {
      let rtt: number | undefined
      await waitFor(
        async () => {
          rtt = await scrapeMetric(node, 'oe_federation_peer_rtt_seconds', { peer: alias })
          return rtt !== undefined && rtt > 0
        },
        10_000,
        `a round-trip time to ${alias} (last ${rtt})`,
      )
      expect(Number.isFinite(rtt)).toBe(true)
      expect(rtt).toBeLessThan(3)
    }

    // Receipts: the audit log accounts for every batch taken, once the session ends.
    await api(consumer, 'POST', `/v1/agreements/${id}/revoke`, { reason: 'test over' })
    let receipts: { batches: [number, number]; records: number }[] = []
    await waitFor(
      async () => {
        receipts = (await auditEntries(consumer))
          .filter((entry) => entry.type === 'transfer.received' && entry.data.id === id)
          .map((entry) => entry.data as unknown as (typeof receipts)[number])
        return receipts.reduce((sum, receipt) => sum + receipt.records, 0) >= 10_000
      },
      10_000,
      'receipts for 10,000 records',
    )
    expect(receipts.reduce((sum, receipt) => sum + receipt.records, 0)).toBe(10_000)
    expect(receipts[0]!.batches[0]).toBe(1)
    for (let i = 1; i < receipts.length; i++)
      expect(receipts[i]!.batches[0]).toBe(receipts[i - 1]!.batches[1] + 1)
    expect((await runCli(['--data-dir', consumer.dataDir, 'audit', 'verify'])).code).toBe(0)
  })

  test('standing data is projected: an attribute not granted appears nowhere on the consumer', async () => {
    const { provider, consumer, id } = await setup(['standing:kinds=evse;attrs=maxPowerW,vendor'])
    for (let i = 1; i <= 5; i++) {
      await api(provider, 'PUT', `/v1/resources/evse/CS1-${i}`, {
        site: 'depot-1',
        name: `Bay ${i}`,
        attrs: { maxPowerW: 22_000, vendor: 'ACME', customerName: 'Jane Citizen', contractRef: `C-${i}` },
      })
    }
    await api(provider, 'PUT', '/v1/resources/meter/M1', { attrs: { vendor: 'ACME', secret: 'x' } })
    await waitFor(async () => (await flowIn(consumer, id)) >= 5, 20_000, 'standing data to arrive')
    await api(provider, 'PUT', '/v1/resources/evse/CS1-1', {
      attrs: { maxPowerW: 11_000, vendor: 'ACME', customerName: 'Changed' },
    })
    await waitFor(async () => (await flowIn(consumer, id)) >= 6, 20_000, 'the update to arrive')
    // Replay everything the consumer holds from the start.
    const received = await readSubject(consumer, 'oe.peer.>', 1_000)
    expect(received).toHaveLength(6)
    const text = JSON.stringify(received)
    for (const secret of ['customerName', 'Jane', 'contractRef', 'Bay ', 'depot-1', 'secret', 'M1'])
      expect(text).not.toContain(secret)
    expect(received.at(-1)!.data).toMatchObject({
      kind: 'evse',
      rid: 'CS1-1',
      attrs: { maxPowerW: 11_000, vendor: 'ACME' },
    })
  })

  test('minInterval: readings of one resource arrive no closer together than the interval', async () => {
    const { provider, consumer, id } = await setup(['telemetry:kinds=meter;quantities=power;minInterval=60s'])
    const t0 = Date.now() - 240_000
    const records = []
    for (let i = 0; i < 240; i++) {
      for (const rid of ['M1', 'M2'])
        records.push({ kind: 'meter', rid, q: 'power', v: i, t: t0 + i * 1_000 })
    }
    await ingest(provider, records)
    // Every reading accounted for: sent or dropped for the interval, and what was sent arrived.
    await waitFor(
      async () => {
        const { recordsOut, drops } = await flowOf(provider, id)
        return recordsOut + (drops.min_interval ?? 0) === 480 && (await flowIn(consumer, id)) === recordsOut
      },
      20_000,
      'all 480 readings to be sent or dropped',
    )
    const received = await readSubject(consumer, 'oe.peer.>', 1_000)
    for (const rid of ['M1', 'M2']) {
      const times = received.filter((m) => m.subject.includes(`.${rid}.`)).map((m) => m.data.t as number)
      expect(times).toHaveLength(4)
      for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(60_000)
    }
    const drops = (
      await api<{ flow: { drops: Record<string, number> } }>(provider, 'GET', `/v1/agreements/${id}`)
    ).flow.drops
    expect(drops.min_interval).toBe(480 - 8)
    expect(
      await scrapeMetric(provider, 'oe_federation_dropped_records', {
        agreement: agreementLabel(id),
        reason: 'min_interval',
      }),
    ).toBe(480 - 8)
  })
})

describe("the consumer's high-water mark and receipts", () => {
  test('are stored within a moment of the last batch, also when nothing follows it', async () => {
    const { provider, consumer, id } = await setup(['telemetry:kinds=meter;quantities=power'])
    const t0 = Date.now() - 60_000
    // Two batches close together: the second comes within the store interval of the first.
    for (const from of [0, 50]) {
      await ingest(
        provider,
        Array.from({ length: 50 }, (_, i) => ({
          kind: 'meter',
          rid: 'M1',
          q: 'power',
          v: from + i,
          t: t0 + from + i,
        })),
      )
      await waitFor(async () => (await flowIn(consumer, id)) === from + 50, 10_000, `${from + 50} readings`)
    }
    const providerNc = await natsOf(provider)
    const lastSeq = (await (await jetstreamManager(providerNc)).streams.info('OE_TEL')).state.last_seq
    await providerNc.close()
    const nc = await natsOf(consumer)
    try {
      const kv = await new Kvm(nc).open('oe-transfer')
      await waitFor(
        async () => {
          const entry = await kv.get(id)
          return entry !== null && (decodeCbor(entry.value) as { hw: { tel: number } }).hw.tel === lastSeq
        },
        2_000,
        `the stored mark to reach OE_TEL's last sequence ${lastSeq}`,
      )
    } finally {
      await nc.close()
    }
    // The receipt for those batches is written a second after it began, with no batch after it.
    await waitFor(
      async () =>
        (await auditEntries(consumer))
          .filter((entry) => entry.type === 'transfer.received' && entry.data.id === id)
          .reduce((sum, entry) => sum + (entry.data.records as number), 0) === 100,
      3_000,
      'a receipt for the 100 readings',
    )
  })
})

describe('payloads that are not readings', () => {
  test("null, text and broken CBOR on the provider's oe.tel and oe.std are dropped as 'payload'; the flow goes on", async () => {
    const { provider, consumer, id } = await setup([
      'telemetry:kinds=meter;quantities=power',
      'standing:kinds=meter;attrs=vendor',
    ])
    const t0 = Date.now() - 60_000
    const readingsFrom = (from: number) =>
      Array.from({ length: 5 }, (_, i) => ({
        kind: 'meter',
        rid: 'M1',
        q: 'power',
        v: from + i,
        t: t0 + from + i,
      }))
    // Both streams flowing first, so that what follows reaches live sessions.
    await api(provider, 'PUT', '/v1/resources/meter/M1', { attrs: { vendor: 'ACME', serial: 'S-1' } })
    await ingest(provider, readingsFrom(0))
    await waitFor(
      async () => (await flowIn(consumer, id)) >= 6,
      20_000,
      'the first readings and the resource',
    )
    const bytes = async () => ({
      in: await scrapeMetric(consumer, 'oe_federation_bytes', {
        agreement: agreementLabel(id),
        direction: 'in',
      }),
      out: await scrapeMetric(provider, 'oe_federation_bytes', {
        agreement: agreementLabel(id),
        direction: 'out',
      }),
    })
    const bytesBefore = await bytes()
    expect(bytesBefore.in).toBeGreaterThan(0)
    expect(bytesBefore.out).toBeGreaterThanOrEqual(bytesBefore.in!)
    const nc = await natsOf(provider)
    try {
      // Any local client may publish anything on these subjects (ARCHITECTURE §5).
      for (const payload of [encodeCbor(null), encodeCbor('soon'), Uint8Array.of(0xff), encodeCbor({ v: 1 })])
        nc.publish('oe.tel.meter.M1.power', payload)
      for (const payload of [encodeCbor(null), encodeCbor('soon')]) nc.publish('oe.std.meter.M1', payload)
      await nc.flush()
    } finally {
      await nc.close()
    }
    await ingest(provider, readingsFrom(5))
    await api(provider, 'PUT', '/v1/resources/meter/M1', { attrs: { vendor: 'ACME 2', serial: 'S-1' } })
    await waitFor(async () => (await flowIn(consumer, id)) >= 12, 20_000, 'the later readings and the update')
    const readings = await readSubject(consumer, 'oe.peer.prov.tel.>', 1_000)
    expect(readings.map((m) => m.data.v)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    const resources = await readSubject(consumer, 'oe.peer.prov.std.>', 1_000)
    expect(resources.map((m) => m.data)).toMatchObject([
      { rid: 'M1', attrs: { vendor: 'ACME' } },
      { rid: 'M1', attrs: { vendor: 'ACME 2' } },
    ])
    expect(JSON.stringify(resources)).not.toContain('S-1')
    const flow = (
      await api<{ flow: { drops: Record<string, number>; sessions: number } }>(
        provider,
        'GET',
        `/v1/agreements/${id}`,
      )
    ).flow
    expect(flow.drops.payload).toBe(6)
    expect(
      await scrapeMetric(provider, 'oe_federation_dropped_records', {
        agreement: agreementLabel(id),
        reason: 'payload',
      }),
    ).toBe(6)
    // One session per stream carried it all: no payload ended one.
    expect(flow.sessions).toBe(1)
    // The six readings and the update after the drops: at least their subjects more bytes.
    const bytesAfter = await bytes()
    const moreAtLeast = 'tel.meter.M1.power'.length * 5 + 'std.meter.M1'.length
    expect(bytesAfter.in).toBeGreaterThanOrEqual(bytesBefore.in! + moreAtLeast)
    expect(bytesAfter.out).toBeGreaterThanOrEqual(bytesBefore.out! + moreAtLeast)
  })
})

describe('limits', () => {
  test('maxRecordsPerSec holds the provider back; everything still arrives', async () => {
    const { provider, consumer, id } = await setup(['telemetry:kinds=meter;quantities=power'], {
      maxRecordsPerSec: 500,
    })
    const t0 = Date.now() - 60_000
    const started = Date.now()
    await ingest(
      provider,
      Array.from({ length: 2_000 }, (_, i) => ({
        kind: 'meter',
        rid: `m${i % 7}`,
        q: 'power',
        v: i,
        t: t0 + i,
      })),
    )
    // The session has been idle for a while, so its bucket is full: at any moment the consumer
    // holds at most a second's worth plus 500 a second since the readings were stored (a little
    // slack for the two clocks' reads), so all 2,000 take 3 s at least.
    const overLimit: string[] = []
    await waitFor(
      async () => {
        const count = await flowIn(consumer, id)
        const elapsedMs = Date.now() - started
        if (count > 500 + elapsedMs / 2 + 10) overLimit.push(`${count} records after ${elapsedMs} ms`)
        return count === 2_000
      },
      15_000,
      'all 2,000 records',
    )
    expect(overLimit).toEqual([])
    expect(Date.now() - started).toBeGreaterThanOrEqual(2_980)
  })

  test('batches stay under the 1 MiB frame limit: big ones are split, a record too big for any frame is dropped', async () => {
    const { provider, consumer, id } = await setup(
      ['telemetry:kinds=meter;quantities=power'],
      {},
      '[federation]\nbatch_records = 10000\nbatch_wait = "1s"\n',
    )
    const nc = await natsOf(provider)
    const t0 = Date.now() - 60_000
    try {
      // 8,000 readings of about 230 bytes (about 1.8 MiB in all) waiting together, one reading
      // of 1,048,000 bytes in the middle, and a last small one.
      const pad = 'p'.repeat(200)
      for (let i = 0; i < 8_000; i++) {
        nc.publish(`oe.tel.meter.m${i % 50}.power`, encodeCbor({ v: i, t: t0 + i, pad }))
        if (i === 4_000)
          nc.publish('oe.tel.meter.big.power', encodeCbor({ v: -1, t: t0, pad: 'x'.repeat(1_048_000) }))
      }
      nc.publish('oe.tel.meter.last.power', encodeCbor({ v: 8_000, t: t0 + 8_000 }))
      await nc.flush()
    } finally {
      await nc.close()
    }
    await waitFor(async () => (await flowIn(consumer, id)) >= 8_001, 30_000, '8,001 readings')
    const flow = (
      await api<{
        flow: { recordsOut: number; batchesOut: number; drops: Record<string, number>; sessions: number }
      }>(provider, 'GET', `/v1/agreements/${id}`)
    ).flow
    // Nothing was sent twice (a later session on a loaded machine sends nothing more).
    expect(flow).toMatchObject({ recordsOut: 8_001, drops: { oversize: 1 } })
    expect(flow.batchesOut).toBeGreaterThanOrEqual(2)
    expect(
      await scrapeMetric(provider, 'oe_federation_dropped_records', {
        agreement: agreementLabel(id),
        reason: 'oversize',
      }),
    ).toBe(1)
    const received = await readSubject(consumer, 'oe.peer.>', 2_000)
    expect(received.map((m) => m.data.v)).toEqual(Array.from({ length: 8_001 }, (_, i) => i))
  })

  /**
   * A provider with `batch_records = 4` and `batch_wait`, and a consumer; readings of one meter
   * to ingest; the provider's counters; and whether the provider has taken everything OE_TEL
   * holds (delivered to it by JetStream, sent or not).
   */
  async function batching(batchWait: string) {
    const pair = await setup(
      ['telemetry:kinds=meter;quantities=power'],
      {},
      `[federation]\nbatch_records = 4\nbatch_wait = "${batchWait}"\n`,
    )
    const { provider, id } = pair
    const t0 = Date.now() - 60_000
    const readings = (from: number, count: number) =>
      Array.from({ length: count }, (_, i) => ({
        kind: 'meter',
        rid: 'M1',
        q: 'power',
        v: from + i,
        t: t0 + from + i,
      }))
    const flowOut = async () => {
      const { flow } = await api<{ flow: { recordsOut: number; batchesOut: number } }>(
        provider,
        'GET',
        `/v1/agreements/${id}`,
      )
      return { recordsOut: flow.recordsOut, batchesOut: flow.batchesOut }
    }
    const nc = await natsOf(provider)
    const jsm = await jetstreamManager(nc)
    const providerTookAll = async (): Promise<boolean> => {
      const last = (await jsm.streams.info('OE_TEL')).state.last_seq
      for await (const info of jsm.consumers.list('OE_TEL'))
        if (info.config.durable_name) return info.delivered.stream_seq >= last
      return false
    }
    /** Ingest readings one at a time, each taken by the provider before the next is stored. */
    const ingestApart = async (from: number, count: number) => {
      for (const reading of readings(from, count)) {
        await ingest(provider, [reading])
        await waitFor(providerTookAll, 5_000, `the provider to take reading ${reading.v}`)
      }
    }
    return { ...pair, readings, flowOut, providerTookAll, ingestApart, close: () => nc.close() }
  }

  test('batch_wait: readings that come apart wait for each other, and go together when the time is up', async () => {
    const { consumer, id, flowOut, ingestApart, close } = await batching('1500ms')
    try {
      // Each was taken before the next came, yet they go as one batch: the first waited for
      // the others, and the batch went, not full, when its time was up.
      await ingestApart(0, 3)
      await waitFor(async () => (await flowIn(consumer, id)) === 3, 10_000, 'the three readings')
      expect(await flowOut()).toEqual({ recordsOut: 3, batchesOut: 1 })
    } finally {
      await close()
    }
    const received = await readSubject(consumer, 'oe.peer.>', 1_000)
    expect(received.map((m) => m.data.v)).toEqual([0, 1, 2])
  })

  test('batch_records: a full batch goes at once, without waiting for batch_wait', async () => {
    // batch_wait at its 10 s maximum: what goes within a few seconds went because it was full.
    const { provider, consumer, id, readings, flowOut, providerTookAll, ingestApart, close } =
      await batching('10s')
    try {
      // Three apart, held together; the fourth fills the batch and all four go.
      await ingestApart(0, 4)
      await waitFor(async () => (await flowIn(consumer, id)) === 4, 8_000, 'a full batch of four')
      expect(await flowOut()).toEqual({ recordsOut: 4, batchesOut: 1 })
      // Ten at once: two full batches go; the last two, taken too, wait for more.
      await ingest(provider, readings(4, 10))
      await waitFor(async () => (await flowIn(consumer, id)) === 12, 8_000, 'two more full batches')
      expect(await providerTookAll()).toBe(true)
      expect(await flowOut()).toEqual({ recordsOut: 12, batchesOut: 3 })
    } finally {
      await close()
    }
    const received = await readSubject(consumer, 'oe.peer.>', 1_000)
    expect(received.map((m) => m.data.v)).toEqual(Array.from({ length: 12 }, (_, i) => i))
  })
})

describe('backlog', () => {
  test('lag counts records sent and not yet acknowledged: a backlog while the consumer cannot store them, none once it has', async () => {
    const { provider, consumer, id } = await setup(['telemetry:kinds=meter;quantities=power'])
    const lag = () => scrapeMetric(provider, 'oe_federation_lag_records', { agreement: agreementLabel(id) })
    const t0 = Date.now() - 60_000
    const readings = (from: number, count: number) =>
      Array.from({ length: count }, (_, i) => ({
        kind: 'meter',
        rid: `m${(from + i) % 5}`,
        q: 'power',
        v: from + i,
        t: t0 + from + i,
      }))
    await ingest(provider, readings(0, 5))
    await waitFor(async () => (await flowIn(consumer, id)) === 5, 10_000, 'the first five readings')
    await waitFor(async () => (await lag()) === 0, 5_000, 'no lag once they are acknowledged')
    // The consumer's nats-server paused: batches reach the consumer, which cannot store them,
    // so it acknowledges none.
    const consumerNats = await natsServerPid(consumer)
    process.kill(consumerNats, 'SIGSTOP')
    try {
      await ingest(provider, readings(5, 200))
      let last: number | undefined
      await waitFor(
        async () => {
          last = await lag()
          return last === 200
        },
        5_000,
        `a lag of 200 (is ${last})`,
      )
      expect(await flowIn(consumer, id)).toBe(5)
    } finally {
      process.kill(consumerNats, 'SIGCONT')
    }
    await waitFor(async () => (await flowIn(consumer, id)) === 205, 15_000, 'the 200 to arrive')
    await waitFor(async () => (await lag()) === 0, 5_000, 'no lag once they are acknowledged')
    // The pause did not end the session (a new one would have sent them again).
    expect((await flowOf(provider, id)).sessions).toBe(1)
  })

  // Regression: a session that ended with batches in flight left their records in the lag for
  // good, and records published by a session whose confirmations never came were stored but
  // never counted as received.
  test('a session that ends with batches in flight leaves no lag behind, and what it stored counts as received', async () => {
    const { provider, consumer, id } = await setup(['telemetry:kinds=meter;quantities=power'])
    const lag = () => scrapeMetric(provider, 'oe_federation_lag_records', { agreement: agreementLabel(id) })
    const readings = (from: number, count: number) =>
      Array.from({ length: count }, (_, i) => ({
        kind: 'meter',
        rid: 'm1',
        q: 'power',
        v: from + i,
        t: Date.now() - 60_000 + from + i,
      }))
    await ingest(provider, readings(0, 5))
    await waitFor(async () => (await flowIn(consumer, id)) === 5, 10_000, 'the first five readings')
    const consumerNats = await natsServerPid(consumer)
    process.kill(consumerNats, 'SIGSTOP')
    try {
      await ingest(provider, readings(5, 200))
      await waitFor(async () => (await lag()) === 200, 5_000, 'a lag of 200')
      // Past the consumer's publish timeout: its session ends with the batches unacknowledged.
      await waitFor(async () => (await flowOf(consumer, id)).lastError !== null, 20_000, 'the session to end')
    } finally {
      process.kill(consumerNats, 'SIGCONT')
    }
    await waitFor(async () => (await flowIn(consumer, id)) === 205, 20_000, 'the 200 counted as received')
    await waitFor(async () => (await lag()) === 0, 10_000, 'no lag left behind')
    expect((await flowOf(provider, id)).sessions).toBeGreaterThan(1)
    const received = await readSubject(consumer, 'oe.peer.>', 1_000)
    expect(received.map((m) => m.data.v)).toEqual(Array.from({ length: 205 }, (_, i) => i))
  }, 90_000)
})

describe('revocation', () => {
  test('revoking mid-stream stops the flow at once, and nothing after the cut-off is published', async () => {
    const { provider, consumer, id } = await setup(['telemetry:kinds=meter;quantities=power'])
    // A second agreement, for voltage, carries a sentinel after the first is revoked.
    const sentinelId = await agree(provider, consumer, ['telemetry:kinds=meter;quantities=voltage'])
    let sending = true
    let sent = 0
    const feeder = (async () => {
      while (sending) {
        const now = Date.now()
        const batch = Array.from({ length: 200 }, (_, i) => ({
          kind: 'meter',
          rid: `m${i % 10}`,
          q: 'power',
          v: sent + i,
          t: now,
        }))
        await api(provider, 'POST', '/v1/telemetry', batch)
        sent += batch.length
        // Pacing, so that the feeder leaves the nodes some of the two cores.
        await Bun.sleep(20)
      }
    })()
    await waitFor(async () => (await flowIn(consumer, id)) > 1_000, 20_000, 'data to flow')
    const revoked = await api<{ state: string }>(consumer, 'POST', `/v1/agreements/${id}/revoke`, {
      reason: 'test',
    })
    expect(revoked.state).toBe('revoked')
    const detail = await api<{ revocation: { at: number } }>(consumer, 'GET', `/v1/agreements/${id}`)
    await waitAgreementState(provider, id, 'revoked', 2_000)
    // The provider goes on storing readings, all stamped after the cut-off.
    const sentAtRevocation = sent
    await waitFor(() => sent >= sentAtRevocation + 1_000, 10_000, '1,000 readings after the cut-off')
    sending = false
    await feeder
    // Stored after all of them, the sentinel reaches the consumer under the other agreement: what
    // the revoked one still carried would have arrived by now.
    await ingest(provider, [{ kind: 'meter', rid: 'm0', q: 'voltage', v: 230, t: Date.now() }])
    await waitFor(async () => (await flowIn(consumer, sentinelId)) === 1, 15_000, 'the sentinel')
    const received = await readSubject(consumer, 'oe.peer.prov.tel.meter.*.power', 1_000)
    const settled = await flowIn(consumer, id)
    expect(received.length).toBe(settled)
    expect(received.length).toBeGreaterThan(1_000)
    expect(received.every((m) => (m.data.t as number) < detail.revocation.at)).toBe(true)
    expect(sent).toBeGreaterThanOrEqual(settled + 1_000)
  })
})

describe('control grants', () => {
  test('a granted command reaches the provider’s oe.ctl; ungranted or out-of-bounds ones are refused and reported', async () => {
    const { provider, consumer, id } = await setup([
      'telemetry:kinds=evse;quantities=power',
      'control:kinds=evse;rids=CS1-1,CS1-2;commands=limit_power;min=0;max=22000',
    ])
    const status = (await api<{ nats: { url: string } }>(consumer, 'GET', '/v1/status')).nats
    const auth = JSON.parse(await readFile(join(consumer.dataDir, 'nats', 'auth.json'), 'utf8'))
    const nc = await connect({ servers: status.url, user: auth.user, pass: auth.password })
    try {
      const send = (rid: string, command: string, v: number) =>
        nc.publish(
          `oe.send.prov.ctl.evse.${rid}.${command}`,
          encodeCbor({ v, u: 'W', until: Date.now() + 60_000, source: 'test' }),
        )
      send('CS1-1', 'limit_power', 7_400)
      send('CS1-9', 'limit_power', 7_400) // rid not granted
      send('CS1-2', 'limit_power', 50_000) // above the bound
      send('CS1-2', 'reset', 0) // command not granted
      send('CS1-2', 'limit_power', 11_000) // granted: a sentinel after the refused ones
      await nc.flush()
      await waitFor(
        async () => (await readSubject(consumer, 'oe.peer.prov.evt.>', 300)).length >= 5,
        15_000,
        'five control results',
      )
      const results = await readSubject(consumer, 'oe.peer.prov.evt.>', 500)
      const resultsOf = (rid: string, command: string) =>
        results
          .filter(
            (m) => m.subject === `oe.peer.prov.evt.evse.${rid}.control_result` && m.data.command === command,
          )
          .map((m) => m.data)
      expect(resultsOf('CS1-1', 'limit_power')).toMatchObject([{ ok: true, id }])
      expect(resultsOf('CS1-9', 'limit_power')).toMatchObject([{ ok: false }])
      expect(resultsOf('CS1-2', 'limit_power')).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ ok: false }),
          expect.objectContaining({ ok: true, id }),
        ]),
      )
      expect(results.filter((m) => m.data.ok === false)).toHaveLength(3)
      // The provider's oe.ctl holds the two granted commands, the sentinel last: what was refused
      // in between never reached it.
      const commands = await readSubject(provider, 'oe.ctl.>', 500)
      expect(commands).toMatchObject([
        { subject: 'oe.ctl.evse.CS1-1.limit_power', data: { v: 7_400, u: 'W' } },
        { subject: 'oe.ctl.evse.CS1-2.limit_power', data: { v: 11_000, u: 'W' } },
      ])
      expect(commands).toHaveLength(2)
      expect((await auditEntries(provider)).some((e) => e.type === 'control.received')).toBe(true)
      expect((await auditEntries(consumer)).filter((e) => e.type === 'control.refused')).toHaveLength(3)
    } finally {
      await nc.close()
    }
  })
})

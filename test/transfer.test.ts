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
  type RunningNode,
  readSubject,
  runCli,
  startNode,
  waitFor,
} from './helpers/node-process.ts'
import { natsOf } from './helpers/transfer.ts'

afterEach(cleanupAll)

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
  return { provider, consumer, id }
}

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
    for (let i = 0; i < 10_000; i++) {
      records.push({
        kind: 'evse',
        rid: `CS1-${(i % 4) + 1}`,
        q: i % 2 ? 'power' : 'energy_import',
        v: i,
        t: t0 + i,
      })
      if (i % 10 === 0) {
        const wrong = (i / 10) % 3
        records.push(
          wrong === 0
            ? { kind: 'station', rid: 'CS1-1', q: 'power', v: -i, t: t0 + i }
            : wrong === 1
              ? { kind: 'evse', rid: 'CS1-1', q: 'voltage', v: -i, t: t0 + i }
              : { kind: 'evse', rid: 'CS9-1', q: 'power', v: -i, t: t0 + i },
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
    await waitFor(
      async () =>
        (
          await api<{ flow: { lagRecords: number; recordsOut: number; batchesOut: number } }>(
            provider,
            'GET',
            `/v1/agreements/${id}`,
          )
        ).flow.batchesOut > 0,
      20_000,
      'a batch to be sent',
    )
    await Bun.sleep(1_500)
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
    // One session per stream carried it all: no payload ended one.
    expect(flow.sessions).toBe(1)
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
    await waitFor(async () => (await flowIn(consumer, id)) > 0, 10_000, 'the first records')
    await Bun.sleep(Math.max(0, started + 1_500 - Date.now()))
    expect(await flowIn(consumer, id)).toBeLessThanOrEqual(1_300)
    await waitFor(async () => (await flowIn(consumer, id)) === 2_000, 15_000, 'all 2,000 records')
    expect(Date.now() - started).toBeGreaterThanOrEqual(3_000)
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
    expect(flow).toMatchObject({ recordsOut: 8_001, drops: { oversize: 1 }, sessions: 1 })
    expect(flow.batchesOut).toBeGreaterThanOrEqual(2)
    const received = await readSubject(consumer, 'oe.peer.>', 2_000)
    expect(received.map((m) => m.data.v)).toEqual(Array.from({ length: 8_001 }, (_, i) => i))
  })

  test('batching follows federation.batch_records and batch_wait', async () => {
    const { provider, consumer, id } = await setup(
      ['telemetry:kinds=meter;quantities=power'],
      {},
      '[federation]\nbatch_records = 4\nbatch_wait = "1500ms"\n',
    )
    const flowOut = async () =>
      (
        await api<{ flow: { recordsOut: number; batchesOut: number } }>(
          provider,
          'GET',
          `/v1/agreements/${id}`,
        )
      ).flow
    const t0 = Date.now() - 60_000
    const reading = (v: number) => ({ kind: 'meter', rid: 'M1', q: 'power', v, t: t0 + v })
    // Three readings a little apart: one batch that waits for more, then goes when its time is up.
    for (const v of [0, 1, 2]) {
      await ingest(provider, [reading(v)])
      await Bun.sleep(100)
    }
    expect((await flowOut()).batchesOut).toBe(0)
    await waitFor(async () => (await flowIn(consumer, id)) === 3, 10_000, 'the first three readings')
    expect(await flowOut()).toMatchObject({ recordsOut: 3, batchesOut: 1 })
    // Ten at once: full batches of four go without waiting, the last two wait their time.
    await ingest(
      provider,
      Array.from({ length: 10 }, (_, i) => reading(3 + i)),
    )
    await waitFor(async () => (await flowOut()).batchesOut >= 3, 1_200, 'two full batches at once')
    await waitFor(async () => (await flowIn(consumer, id)) === 13, 10_000, 'all 13 readings')
    expect(await flowOut()).toMatchObject({ recordsOut: 13, batchesOut: 4 })
    const received = await readSubject(consumer, 'oe.peer.>', 1_000)
    expect(received.map((m) => m.data.v)).toEqual(Array.from({ length: 13 }, (_, i) => i))
  })
})

describe('revocation', () => {
  test('revoking mid-stream stops the flow at once, and nothing after the cut-off is published', async () => {
    const { provider, consumer, id } = await setup(['telemetry:kinds=meter;quantities=power'])
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
    await Bun.sleep(1_000)
    const settled = await flowIn(consumer, id)
    await Bun.sleep(1_500)
    sending = false
    await feeder
    expect(await flowIn(consumer, id)).toBe(settled)
    const received = await readSubject(consumer, 'oe.peer.>', 1_000)
    expect(received.length).toBe(settled)
    expect(received.every((m) => (m.data.t as number) < detail.revocation.at)).toBe(true)
    expect(sent).toBeGreaterThan(settled)
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
      await nc.flush()
      await waitFor(
        async () => (await readSubject(consumer, 'oe.peer.prov.evt.>', 300)).length >= 4,
        15_000,
        'four control results',
      )
      const results = await readSubject(consumer, 'oe.peer.prov.evt.>', 500)
      const byRid = (rid: string, command: string) =>
        results.find(
          (m) => m.subject === `oe.peer.prov.evt.evse.${rid}.control_result` && m.data.command === command,
        )?.data
      expect(byRid('CS1-1', 'limit_power')).toMatchObject({ ok: true, id })
      expect(byRid('CS1-9', 'limit_power')).toMatchObject({ ok: false })
      expect(results.filter((m) => m.data.ok === false)).toHaveLength(3)
      const commands = await readSubject(provider, 'oe.ctl.>', 500)
      expect(commands).toHaveLength(1)
      expect(commands[0]).toMatchObject({
        subject: 'oe.ctl.evse.CS1-1.limit_power',
        data: { v: 7_400, u: 'W' },
      })
      expect((await auditEntries(provider)).some((e) => e.type === 'control.received')).toBe(true)
      expect((await auditEntries(consumer)).filter((e) => e.type === 'control.refused')).toHaveLength(3)
    } finally {
      await nc.close()
    }
  })
})

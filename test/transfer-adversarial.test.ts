/**
 * A consumer under attack by its provider: a rogue peer with a valid key and a real, co-signed
 * agreement opens `/oe/transfer/1.0.0` itself and sends out-of-scope records, batches for other
 * agreements, bad signatures, replays, oversized frames and batches beyond its credit. The
 * consumer publishes only in-scope records it has not published before, audits every refusal,
 * closes the sessions that break the protocol, and keeps serving its honest peers.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { encodeCbor } from '../data-plane/index.ts'
import {
  agreementId,
  base64url,
  encodeFrame,
  type Grant,
  newAgreementBody,
  signId,
} from '../federation/index.ts'
import { type AuditLine, api, auditEntries, propose, waitAgreementState } from './helpers/federation.ts'
import {
  cleanupAll,
  type RunningNode,
  readSubject,
  type TailMessage,
  waitFor,
} from './helpers/node-process.ts'
import { newIdentity, type Rogue, startArena } from './helpers/rogue-peer.ts'
import {
  type BatchBody,
  type BatchRecord,
  frameBytes,
  openTransfer,
  reading,
  signedBatch,
  type TransferLink,
} from './helpers/rogue-provider.ts'

let victim: RunningNode
let honest: RunningNode
let rogue: Rogue
let target: string
let victimKey: string

beforeAll(async () => {
  ;({ victim, honest, rogue, target, victimKey } = await startArena())
})

afterAll(async () => {
  await rogue?.stop()
  await cleanupAll()
})

const DAY = 86_400_000
const METER_POWER: Grant = { data: 'telemetry', kinds: ['meter'], quantities: ['power'] }
const CREDIT = 8

const rogueParty = () => ({ org: 'Rogue', key: base64url(rogue.identity.publicKey) })
const victimParty = () => ({ org: 'Victim', key: victimKey })

/**
 * An agreement the rogue proposes over `/oe/agreement/1.0.0` and the victim signs through its
 * API. By default the rogue offers meter power readings (rogue = provider, victim = consumer).
 * The victim's acceptance cannot be delivered (the rogue does not serve the protocol); the
 * victim holds both signatures, so it is active there.
 */
async function agreement(
  options: { victimProvides?: boolean; accept?: boolean; validUntil?: number } = {},
): Promise<{ id: string; validUntil: number }> {
  const validUntil = options.validUntil ?? Date.now() + DAY
  const body = newAgreementBody({
    provider: options.victimProvides ? victimParty() : rogueParty(),
    consumer: options.victimProvides ? rogueParty() : victimParty(),
    purpose: 'transfer adversarial test',
    validFrom: Date.now() - 60_000,
    validUntil,
    grants: [METER_POWER],
  })
  const id = agreementId(body)
  const role = options.victimProvides ? 'consumer' : 'provider'
  const result = await rogue.exchange(
    target,
    encodeFrame({ t: 'propose', doc: { body, signatures: { [role]: signId(id, rogue.identity) } } }),
  )
  expect(result.reply).toEqual({ ok: true })
  if (options.accept ?? true) {
    await api(victim, 'POST', `/v1/agreements/${id}/accept`)
    await waitAgreementState(victim, id, 'active')
  } else {
    await waitAgreementState(victim, id, 'proposed')
  }
  return { id, validUntil }
}

/** Open a session as the provider: hello, and the consumer's ready frame. */
async function session(id: string): Promise<{ link: TransferLink; ready: Record<string, unknown> }> {
  const link = await openTransfer(rogue, target)
  await link.send({ t: 'hello', id })
  const ready = (await link.next(10_000)) as Record<string, unknown>
  expect(ready).toMatchObject({ t: 'ready', credit: CREDIT })
  return { link, ready }
}

/** A batch of meter power readings `rid(seq)` with the given source sequences, tagged. */
function readings(tag: string, seqs: number[]): BatchRecord[] {
  return seqs.map((seq) => [`tel.meter.${tag}-${seq}.power`, reading(tag), seq])
}

function batch(id: string, n: number, records: BatchRecord[], upTo?: number, area = 'tel'): BatchBody {
  return { id, n, a: area, upTo: upTo ?? Math.max(0, ...records.map((record) => record[2])), r: records }
}

/** `count` one-record batches, numbered from 1, as one write: none waits for an ack. */
function flood(id: string, tag: string, count: number): Uint8Array {
  const frames = Array.from({ length: count }, (_, i) =>
    frameBytes(signedBatch(rogue.identity, batch(id, i + 1, readings(tag, [i + 1])))),
  )
  const all = new Uint8Array(frames.reduce((sum, frame) => sum + frame.length, 0))
  let offset = 0
  for (const frame of frames) {
    all.set(frame, offset)
    offset += frame.length
  }
  return all
}

/** What the victim published from the rogue for one test (found by tag in subject or payload). */
async function published(tag: string): Promise<TailMessage[]> {
  const all = await readSubject(victim, 'oe.peer.rogue.>', 400)
  return all.filter((message) => message.subject.includes(tag) || message.data?.tag === tag)
}

async function audit(type: string, id?: string): Promise<AuditLine[]> {
  return (await auditEntries(victim)).filter(
    (entry) => entry.type === type && (id === undefined || entry.data.id === id),
  )
}

async function waitAudit(type: string, id: string, count = 1): Promise<AuditLine[]> {
  let entries: AuditLine[] = []
  await waitFor(
    async () => {
      entries = await audit(type, id)
      return entries.length >= count
    },
    5_000,
    `${count} ${type} audit entries for ${id.slice(0, 12)}`,
  )
  return entries
}

/** The victim is ready, and an honest peer can still agree something with it end to end. */
async function victimStillServes(): Promise<void> {
  expect((await victim.fetch('/readyz')).status).toBe(200)
  const id = await propose(honest, 'victim', { grants: ['telemetry:kinds=meter;quantities=power'] })
  await waitAgreementState(victim, id, 'proposed')
  await api(victim, 'POST', `/v1/agreements/${id}/accept`)
  await waitAgreementState(honest, id, 'active')
}

describe('records and batches from a provider with a valid agreement', () => {
  test('out-of-scope records in a correctly signed batch are dropped and audited; the rest are published', async () => {
    const { id, validUntil } = await agreement()
    const { link } = await session(id)
    const tag = 'scope'
    const resource = { kind: 'meter', rid: `${tag}-5`, attrs: {}, updated: Date.now(), tag }
    const records: BatchRecord[] = [
      [`tel.meter.${tag}-1.power`, reading(tag), 1],
      [`tel.meter.${tag}-2.power`, reading(tag), 2],
      // Another kind, another quantity, standing data and events inside a telemetry batch.
      [`tel.evse.${tag}-3.power`, reading(tag), 3],
      [`tel.meter.${tag}-4.energy_import`, reading(tag), 4],
      [`std.meter.${tag}-5`, encodeCbor(resource), 5],
      [`evt.meter.${tag}-6.fault`, encodeCbor({ t: Date.now(), tag }), 6],
      [`tel.meter.${tag}-7.power.extra`, reading(tag), 7],
      // A reading dated after the agreement ends, a payload that is not CBOR, a sequence past upTo.
      [`tel.meter.${tag}-8.power`, reading(tag, validUntil + 1_000), 8],
      [`tel.meter.${tag}-9.power`, new Uint8Array([0xff, 0xfe]), 9],
      [`tel.meter.${tag}-10.power`, reading(tag), 99],
      // Well-formed CBOR that is not a reading: null and a text.
      [`tel.meter.${tag}-12.power`, encodeCbor(null), 12],
      [`tel.meter.${tag}-13.power`, encodeCbor('soon'), 13],
    ]
    await link.send(signedBatch(rogue.identity, batch(id, 1, records, 20)))
    expect(await link.next()).toEqual({ t: 'ack', n: 1, credit: 1 })
    // A batch for an area the agreement does not grant at all.
    await link.send(
      signedBatch(
        rogue.identity,
        batch(id, 2, [[`std.meter.${tag}-11`, encodeCbor(resource), 21]], 21, 'std'),
      ),
    )
    expect(await link.next()).toEqual({ t: 'ack', n: 2, credit: 1 })
    // The session goes on: dropping records is not a protocol violation.
    await link.send(signedBatch(rogue.identity, batch(id, 3, readings(tag, [30]))))
    expect(await link.next()).toEqual({ t: 'ack', n: 3, credit: 1 })
    link.abort()

    const subjects = (await published(tag)).map((message) => message.subject).sort()
    expect(subjects).toEqual([
      `oe.peer.rogue.tel.meter.${tag}-1.power`,
      `oe.peer.rogue.tel.meter.${tag}-2.power`,
      `oe.peer.rogue.tel.meter.${tag}-30.power`,
    ])
    const dropped = await waitAudit('transfer.dropped', id, 2)
    expect(dropped.map((entry) => entry.data.counts)).toEqual([
      { not_granted: 4, bad_subject: 1, after_cutoff: 1, payload: 4 },
      { not_granted: 1 },
    ])
    expect(dropped.every((entry) => entry.data.peer === 'rogue')).toBe(true)
    expect(await audit('transfer.violation', id)).toEqual([])
    await victimStillServes()
  })

  test('records with an empty or blank subject token are never published; the next session resumes', async () => {
    const { id } = await agreement()
    const tag = 'blank'
    const ok = (n: number): BatchRecord => [`tel.meter.${tag}-ok${n}.power`, reading(tag), n]
    // The first reaches NATS, where no stream captures it; the NATS client refuses the second
    // before sending. Either way the publish fails and the session ends without an ack (and, a
    // gap, without an audit entry); the next session resumes from what was published.
    for (const bad of [
      ['tel.meter..power', reading(tag), 1] as BatchRecord,
      ['tel.meter.a b.power', reading(tag), 3] as BatchRecord,
    ]) {
      const { link } = await session(id)
      await link.send(signedBatch(rogue.identity, batch(id, 1, [bad, ok(bad[2] + 1)])))
      await link.endedWithin(3_000)
      link.abort()
    }
    const { link } = await session(id)
    await link.send(signedBatch(rogue.identity, batch(id, 1, [ok(5)])))
    expect(await link.next()).toEqual({ t: 'ack', n: 1, credit: 1 })
    link.abort()
    const subjects = (await published(tag)).map((message) => message.subject)
    for (const subject of subjects)
      expect(subject).toMatch(/^oe\.peer\.rogue\.tel\.meter\.blank-ok\d\.power$/)
    expect(subjects).toContain(`oe.peer.rogue.tel.meter.${tag}-ok5.power`)
    expect(new Set(subjects).size).toBe(subjects.length)
    await victimStillServes()
  })

  // Regression: the consumer's re-check once took any rid token when the grant had no `rids`,
  // so `*` and `>` became literal tokens of subjects stored in OE_PEER.
  test('records whose rid token is a NATS wildcard are not published', async () => {
    const { id } = await agreement()
    const { link } = await session(id)
    const tag = 'wildcard'
    const records: BatchRecord[] = [
      ['tel.meter.*.power', reading(tag), 1],
      ['tel.meter.>.power', reading(tag), 2],
      [`tel.meter.${tag}-ok.power`, reading(tag), 3],
    ]
    await link.send(signedBatch(rogue.identity, batch(id, 1, records)))
    expect(await link.next()).toEqual({ t: 'ack', n: 1, credit: 1 })
    link.abort()
    const subjects = (await published(tag)).map((message) => message.subject)
    expect(subjects).toEqual([`oe.peer.rogue.tel.meter.${tag}-ok.power`])
  })

  test('a batch naming another agreement closes the session; nothing is published', async () => {
    const { id } = await agreement()
    const other = await agreement()
    const { link } = await session(id)
    const tag = 'other'
    await link.send(signedBatch(rogue.identity, batch(other.id, 1, readings(tag, [1, 2, 3]))))
    const ending = await link.endedWithin(5_000)
    expect(ending?.how).toBe('reset')
    expect(link.received.filter((frame) => (frame as { t?: string }).t === 'ack')).toEqual([])
    const violations = await waitAudit('transfer.violation', id)
    expect(violations[0]!.data).toMatchObject({
      peer: 'rogue',
      reason: expect.stringMatching(/another agreement/),
    })
    expect(await published(tag)).toEqual([])
    await victimStillServes()
  })

  test('a batch whose signature does not verify closes the session; nothing is published', async () => {
    const { id } = await agreement()
    const tag = 'sig'
    const good = signedBatch(rogue.identity, batch(id, 1, readings(tag, [1, 2])))
    const flippedSig = { ...good, sig: good.sig.map((byte, i) => (i === 10 ? byte ^ 0x01 : byte)) }
    const alteredBody = signedBatch(rogue.identity, batch(id, 1, readings(tag, [1, 2])))
    // Same length, one record's sequence changed after signing.
    const altered = signedBatch(rogue.identity, batch(id, 1, readings(tag, [1, 3])))
    const thirdKey = signedBatch(newIdentity(), batch(id, 1, readings(tag, [1, 2])))
    const cases = [flippedSig, { ...alteredBody, body: altered.body }, thirdKey]
    for (const frame of cases) {
      const { link } = await session(id)
      await link.send(frame)
      const ending = await link.endedWithin(5_000)
      expect(ending?.how).toBe('reset')
      expect(link.received.filter((f) => (f as { t?: string }).t === 'ack')).toEqual([])
    }
    const violations = await waitAudit('transfer.violation', id, cases.length)
    for (const violation of violations) expect(violation.data.reason).toMatch(/signature does not verify/)
    expect(await published(tag)).toEqual([])
    await victimStillServes()
  })

  test('replayed batch numbers and records at or below the high-water mark are not published again', async () => {
    const { id } = await agreement()
    const tag = 'replay'
    const first = await session(id)
    expect(first.ready.hw).toEqual({ tel: 0, std: 0, evt: 0 })
    const one = signedBatch(rogue.identity, batch(id, 1, readings(tag, [1, 2, 3])))
    await first.link.send(one)
    expect(await first.link.next()).toEqual({ t: 'ack', n: 1, credit: 1 })
    // The same batch number again (the very same frame).
    await first.link.send(one)
    expect(await first.link.next()).toEqual({ t: 'ack', n: 1, credit: 1 })
    // A new batch number carrying records the consumer already holds, and one new record.
    await first.link.send(signedBatch(rogue.identity, batch(id, 2, readings(tag, [2, 3, 4]), 6)))
    expect(await first.link.next()).toEqual({ t: 'ack', n: 2, credit: 1 })
    first.link.abort()
    await waitAudit('transfer.violation', id)

    // A new session starts from what the consumer holds, and batch numbers start again at 1.
    const second = await session(id)
    expect(second.ready.hw).toEqual({ tel: 6, std: 0, evt: 0 })
    await second.link.send(signedBatch(rogue.identity, batch(id, 1, readings(tag, [1, 2, 3, 4, 5, 6, 7]))))
    expect(await second.link.next()).toEqual({ t: 'ack', n: 1, credit: 1 })
    second.link.abort()

    const subjects = (await published(tag)).map((message) => message.subject).sort()
    expect(subjects).toEqual(
      [1, 2, 3, 4, 7].map((seq) => `oe.peer.rogue.tel.meter.${tag}-${seq}.power`).sort(),
    )
    const violations = await audit('transfer.violation', id)
    expect(violations).toHaveLength(1)
    expect(violations[0]!.data.reason).toMatch(/replayed batch 1/)
    await victimStillServes()
  })

  // Regression: source sequences were once compared only with the high-water mark read before
  // the batch, so one record repeated inside a batch was published once per copy.
  test('one record repeated inside a batch is published once', async () => {
    const { id } = await agreement()
    const tag = 'twice'
    const { link } = await session(id)
    const record: BatchRecord = [`tel.meter.${tag}-1.power`, reading(tag), 1]
    await link.send(signedBatch(rogue.identity, batch(id, 1, [record, record, record])))
    expect(await link.next()).toEqual({ t: 'ack', n: 1, credit: 1 })
    link.abort()
    expect(await published(tag)).toHaveLength(1)
  })
})

describe('frames and flow control', () => {
  test('a batch frame declared over 1 MiB resets the stream before it is buffered; nothing is published', async () => {
    const { id } = await agreement()
    const tag = 'huge'
    // A length prefix of 2 MiB, and only a little of what it announces.
    const declared = new Uint8Array(4 + 4096)
    declared.set([0x80, 0x80, 0x80, 0x01])
    const first = await session(id)
    await first.link.sendBytes(declared).catch(() => {})
    expect((await first.link.endedWithin(5_000))?.how).toBe('reset')
    // A real, correctly signed batch whose frame is over the limit.
    const second = await session(id)
    const big = readings(
      tag,
      Array.from({ length: 3_000 }, (_, i) => i + 1),
    ).map(
      ([rest, , seq]): BatchRecord => [
        rest,
        encodeCbor({ v: 1, t: Date.now(), tag, pad: 'x'.repeat(400) }),
        seq,
      ],
    )
    const frame = frameBytes(signedBatch(rogue.identity, batch(id, 1, big)))
    expect(frame.length).toBeGreaterThan(1024 * 1024)
    await second.link.sendBytes(frame, 5_000).catch(() => {})
    expect((await second.link.endedWithin(5_000))?.how).toBe('reset')
    expect(second.link.received.filter((f) => (f as { t?: string }).t === 'ack')).toEqual([])

    const violations = await waitAudit('transfer.violation', id, 2)
    for (const violation of violations) expect(violation.data.reason).toMatch(/over the limit/)
    expect(await published(tag)).toEqual([])
    await victimStillServes()
  })

  test('a provider that ignores its credit publishes nothing out of scope, nothing twice, and the node keeps serving', async () => {
    const { id } = await agreement()
    const tag = 'flood-a'
    const { link, ready } = await session(id)
    await link.sendBytes(flood(id, tag, (ready.credit as number) * 4))
    await link.endedWithin(1_000)
    link.abort()
    const subjects = (await published(tag)).map((message) => message.subject)
    for (const subject of subjects)
      expect(subject).toMatch(/^oe\.peer\.rogue\.tel\.meter\.flood-a-\d+\.power$/)
    expect(new Set(subjects).size).toBe(subjects.length)
    await victimStillServes()
  })

  // Regression: credit was once counted when a frame was processed rather than when it arrived,
  // so a provider ignoring its credit was never caught and frames queued without bound.
  test('batches beyond the credit close the session; no more than the credited batches are published', async () => {
    const { id } = await agreement()
    const tag = 'flood-b'
    const { link, ready } = await session(id)
    const credit = ready.credit as number
    await link.sendBytes(flood(id, tag, credit * 4))
    const ending = await link.endedWithin(3_000)
    link.abort()
    // The audit entry is written just after the session is cut.
    await waitFor(
      async () => (await audit('transfer.violation', id)).length > 0,
      3_000,
      'the violation to be audited',
    )
    const violations = await audit('transfer.violation', id)
    expect(violations.map((entry) => entry.data.reason)).toEqual([expect.stringMatching(/credit/)])
    expect(ending?.how).toBe('reset')
    expect((await published(tag)).length).toBeLessThanOrEqual(credit)
  })
})

describe('sessions the consumer must refuse', () => {
  test('a hello for an agreement the consumer does not have, does not consume, or has not signed is refused', async () => {
    const unknown = 'ab'.repeat(32)
    const { id: providedByVictim } = await agreement({ victimProvides: true })
    const { id: proposedOnly } = await agreement({ accept: false })
    const withHonest = await propose(honest, 'victim', { grants: ['telemetry:kinds=meter;quantities=power'] })
    await waitAgreementState(victim, withHonest, 'proposed')
    await api(victim, 'POST', `/v1/agreements/${withHonest}/accept`)
    await waitAgreementState(victim, withHonest, 'active')

    const cases: [string, unknown, string][] = [
      ['unknown', { t: 'hello', id: unknown }, 'AgreementNotFoundError'],
      ['the victim provides', { t: 'hello', id: providedByVictim }, 'AgreementStateError'],
      ['only proposed', { t: 'hello', id: proposedOnly }, 'AgreementStateError'],
      ['between the victim and another peer', { t: 'hello', id: withHonest }, 'ForeignAgreementError'],
      ['a batch instead of a hello', signedBatch(rogue.identity, batch(unknown, 1, [])), 'FrameError'],
    ]
    for (const [name, hello, error] of cases) {
      const before = (await audit('transfer.refused')).length
      const link = await openTransfer(rogue, target)
      await link.send(hello)
      const ending = await link.endedWithin(5_000)
      expect(ending, name).toBeDefined()
      expect(
        link.received.some((frame) => (frame as { t?: string }).t === 'ready'),
        name,
      ).toBe(false)
      const reply = link.received[0] as { t?: string; error?: string } | undefined
      if (reply !== undefined) expect(reply, name).toMatchObject({ t: 'error', error })
      await waitFor(async () => (await audit('transfer.refused')).length > before, 5_000, `${name} refused`)
      const refused = (await audit('transfer.refused')).at(-1)!
      expect(refused.data, name).toMatchObject({ peer: 'rogue', error })
    }
    await victimStillServes()
  })
})

describe('after all of it', () => {
  test('an honest provider still delivers to the victim', async () => {
    const id = await propose(honest, 'victim', {
      offer: true,
      grants: ['telemetry:kinds=meter;quantities=power'],
    })
    await waitAgreementState(victim, id, 'proposed')
    await api(victim, 'POST', `/v1/agreements/${id}/accept`)
    await waitAgreementState(honest, id, 'active')
    const t = Date.now()
    const records = Array.from({ length: 5 }, (_, i) => ({
      kind: 'meter',
      rid: 'honest-1',
      q: 'power',
      v: i,
      t: t + i,
    }))
    const response = await honest.fetch('/v1/telemetry', {
      method: 'POST',
      body: JSON.stringify(records),
      headers: { 'content-type': 'application/json' },
    })
    expect(response.ok).toBe(true)
    await waitFor(
      async () => (await readSubject(victim, 'oe.peer.honest.tel.meter.honest-1.power', 300)).length === 5,
      15_000,
      'the honest records to arrive',
    )
  })
})

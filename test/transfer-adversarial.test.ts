/**
 * A consumer under attack by its provider: a rogue peer with a valid key and a real, co-signed
 * agreement opens `/oe/transfer/1.0.0` itself and sends out-of-scope records, batches for other
 * agreements, bad signatures, replays, oversized frames and batches beyond its credit. The
 * consumer publishes only in-scope records it has not published before, audits every refusal,
 * closes the sessions that break the protocol, and keeps serving its honest peers.
 */
import { createHash, createPublicKey, verify } from 'node:crypto'
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
  runCli,
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
  options: { victimProvides?: boolean; accept?: boolean; validUntil?: number; grants?: Grant[] } = {},
): Promise<{ id: string; validUntil: number }> {
  const validUntil = options.validUntil ?? Date.now() + DAY
  const body = newAgreementBody({
    provider: options.victimProvides ? victimParty() : rogueParty(),
    consumer: options.victimProvides ? rogueParty() : victimParty(),
    purpose: 'transfer adversarial test',
    validFrom: Date.now() - 60_000,
    validUntil,
    grants: options.grants ?? [METER_POWER],
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
  /**
   * A batch holding `bad` beside a good record, sent after a good batch in the same session:
   * the good batch is published (so the read below sees data), the bad one is refused whole,
   * the session is cut and the violation audited with its counts by reason.
   */
  async function expectCut(
    id: string,
    tag: string,
    bad: (seq: number) => BatchRecord[],
    options: { area?: string; good?: (seq: number) => BatchRecord } = {},
  ): Promise<{ reason: string; counts: Record<string, number> }> {
    const before = (await audit('transfer.violation', id)).length
    const publishedBefore = (await published(tag)).length
    const { link, ready } = await session(id)
    const area = options.area ?? 'tel'
    const hw = (ready.hw as Record<string, number>)[area]!
    const good =
      options.good ?? ((seq: number): BatchRecord => [`tel.meter.${tag}-ok${seq}.power`, reading(tag), seq])
    await link.send(signedBatch(rogue.identity, batch(id, 1, [good(hw + 1)], hw + 1, area)))
    expect(await link.next()).toEqual({ t: 'ack', n: 1, credit: 1 })
    const records = [good(hw + 2), ...bad(hw + 3)]
    await link.send(signedBatch(rogue.identity, batch(id, 2, records, hw + 2 + records.length, area)))
    const ending = await link.endedWithin(5_000)
    link.abort()
    expect(ending?.how).toBe('reset')
    expect(link.received.filter((frame) => (frame as { n?: number }).n === 2)).toEqual([])
    const violations = await waitAudit('transfer.violation', id, before + 1)
    const violation = violations.at(-1)!
    expect(violation.data).toMatchObject({ peer: 'rogue', batch: 2 })
    // The first batch is published (the read sees it); nothing of the refused batch is.
    await waitFor(async () => (await published(tag)).length === publishedBefore + 1, 5_000, 'the good batch')
    expect((await published(tag)).length).toBe(publishedBefore + 1)
    return violation.data as { reason: string; counts: Record<string, number> }
  }

  test('a batch holding any record outside a telemetry grant is refused whole, the session cut and audited', async () => {
    const { id, validUntil } = await agreement({
      grants: [{ data: 'telemetry', kinds: ['meter'], rids: ['scope-a', 'scope-b'], quantities: ['power'] }],
    })
    const tag = 'scope'
    const resource = { kind: 'meter', rid: 'scope-a', attrs: {}, updated: Date.now(), tag }
    const good = (seq: number): BatchRecord => [
      `tel.meter.scope-${seq % 2 ? 'a' : 'b'}.power`,
      reading(tag),
      seq,
    ]
    const cases: [string, (seq: number) => BatchRecord[], Record<string, number>][] = [
      ['another kind', (s) => [[`tel.evse.scope-a.power`, reading(tag), s]], { not_granted: 1 }],
      ['another quantity', (s) => [[`tel.meter.scope-a.energy_import`, reading(tag), s]], { not_granted: 1 }],
      ['a rid outside the grant', (s) => [[`tel.meter.scope-z.power`, reading(tag), s]], { not_granted: 1 }],
      ['standing data', (s) => [[`std.meter.scope-a`, encodeCbor(resource), s]], { not_granted: 1 }],
      [
        'an event',
        (s) => [[`evt.meter.scope-a.fault`, encodeCbor({ t: Date.now(), tag }), s]],
        { not_granted: 1 },
      ],
      [
        'an extra subject token',
        (s) => [[`tel.meter.scope-a.power.extra`, reading(tag), s]],
        { bad_subject: 1 },
      ],
      ['a wildcard rid', (s) => [['tel.meter.*.power', reading(tag), s]], { bad_subject: 1 }],
      [
        'a reading after the agreement ends',
        (s) => [[`tel.meter.scope-a.power`, reading(tag, validUntil + 1_000), s]],
        { after_cutoff: 1 },
      ],
      [
        'a payload that is not CBOR',
        (s) => [[`tel.meter.scope-a.power`, new Uint8Array([0xff, 0xfe]), s]],
        { payload: 1 },
      ],
      ['a null payload', (s) => [[`tel.meter.scope-a.power`, encodeCbor(null), s]], { payload: 1 }],
      ['a sequence past upTo', (s) => [[`tel.meter.scope-a.power`, reading(tag), s + 1_000]], { payload: 1 }],
      [
        'a record repeated inside the batch',
        (s) => [
          [`tel.meter.scope-a.power`, reading(tag), s],
          [`tel.meter.scope-b.power`, reading(tag), s],
        ],
        { replayed: 1 },
      ],
      [
        'a record at or below the high-water mark',
        (s) => [[`tel.meter.scope-a.power`, reading(tag), s - 3]],
        { replayed: 1 },
      ],
    ]
    for (const [name, bad, counts] of cases) {
      const violation = await expectCut(id, tag, bad, { good })
      expect(violation.counts, name).toEqual(counts)
      expect(violation.reason, name).toMatch(/batch 2 holds \d+ record\(s\) the agreement does not allow/)
    }
    // Each refused batch cut its session; the next session resumed from the last good batch.
    const subjects = (await published(tag)).map((message) => message.subject)
    expect(subjects).toHaveLength(cases.length)
    expect((await victim.fetch('/readyz')).status).toBe(200)
  })

  test('standing data beyond its granted attributes, or at a site outside the grant, is refused whole', async () => {
    const { id } = await agreement({
      grants: [
        { data: 'standing', kinds: ['meter'], attrs: ['name', 'site'], sites: ['s1'] },
        { data: 'telemetry', kinds: ['meter'], quantities: ['power'] },
      ],
    })
    const tag = 'attrs'
    const std = (rid: string, extra: Record<string, unknown>) =>
      encodeCbor({ kind: 'meter', rid, attrs: {}, updated: Date.now(), ...extra })
    const good = (seq: number): BatchRecord => [
      `std.meter.${tag}-ok${seq}`,
      std(`${tag}-ok${seq}`, { name: tag, site: 's1' }),
      seq,
    ]
    const cases: [string, (seq: number) => BatchRecord[], Record<string, number>][] = [
      [
        'an attribute not granted',
        (s) => [[`std.meter.${tag}-x${s}`, std(`${tag}-x${s}`, { attrs: { secret: 1 } }), s]],
        { attrs: 1 },
      ],
      [
        'a site outside the grant',
        (s) => [[`std.meter.${tag}-x${s}`, std(`${tag}-x${s}`, { site: 's2' }), s]],
        { site: 1 },
      ],
      [
        'a record that is not a map',
        (s) => [[`std.meter.${tag}-x${s}`, encodeCbor('text'), s]],
        { payload: 1 },
      ],
    ]
    for (const [name, bad, counts] of cases) {
      const violation = await expectCut(id, tag, bad, { area: 'std', good })
      expect(violation.counts, name).toEqual(counts)
    }
    const names = (await published(tag)).map((message) => message.data?.name)
    expect(names).toEqual(cases.map(() => tag))
  })

  test('a reading sooner than minInterval after the last, and an event type not granted, are refused whole', async () => {
    const { id } = await agreement({
      grants: [
        { data: 'telemetry', kinds: ['meter'], quantities: ['power'], minIntervalMs: 60_000 },
        { data: 'events', kinds: ['meter'], types: ['fault'] },
      ],
    })
    const tag = 'interval'
    const t0 = Date.now() - 3_600_000
    // Each good reading is a minute after the one before, so each passes the interval.
    const good = (seq: number): BatchRecord => [
      `tel.meter.${tag}-1.power`,
      reading(tag, t0 + seq * 60_000),
      seq,
    ]
    const soon = await expectCut(
      id,
      tag,
      (s) => [[`tel.meter.${tag}-1.power`, reading(tag, t0 + (s - 1) * 60_000 + 1_000), s]],
      { good },
    )
    expect(soon.counts).toEqual({ min_interval: 1 })
    const event = (seq: number, type: string): BatchRecord => [
      `evt.meter.${tag}-1.${type}`,
      encodeCbor({ t: Date.now(), tag }),
      seq,
    ]
    const types = await expectCut(id, tag, (s) => [event(s, 'status')], {
      area: 'evt',
      good: (s) => event(s, 'fault'),
    })
    expect(types.counts).toEqual({ not_granted: 1 })
    // Regression: the re-check once took any rid token when the grant had no `rids`, so `*` and
    // `>` became literal tokens of subjects stored in OE_PEER.
    const wildcard = await expectCut(
      id,
      tag,
      (s) => [['tel.meter.>.power', reading(tag, t0 + s * 60_000), s]],
      {
        good,
      },
    )
    expect(wildcard.counts).toEqual({ bad_subject: 1 })
  })

  test('a site learned from standing data limits telemetry granted for other sites only', async () => {
    const { id } = await agreement({
      grants: [
        { data: 'standing', kinds: ['meter'], attrs: ['site'] },
        { data: 'telemetry', kinds: ['meter'], quantities: ['power'], sites: ['s1'] },
      ],
    })
    const tag = 'sites'
    const { link } = await session(id)
    const std = (rid: string, site: string): BatchRecord => [
      `std.meter.${rid}`,
      encodeCbor({ kind: 'meter', rid, site, attrs: {}, updated: Date.now(), tag }),
      rid === `${tag}-in` ? 1 : 2,
    ]
    await link.send(
      signedBatch(rogue.identity, batch(id, 1, [std(`${tag}-in`, 's1'), std(`${tag}-out`, 's2')], 2, 'std')),
    )
    expect(await link.next()).toEqual({ t: 'ack', n: 1, credit: 1 })
    link.abort()
    // At s1, and at a site the consumer was never told of: published. At s2: refused.
    const violation = await expectCut(id, tag, (s) => [[`tel.meter.${tag}-out.power`, reading(tag), s]], {
      good: (s) => [`tel.meter.${s % 2 ? `${tag}-in` : `${tag}-unknown`}.power`, reading(tag), s],
    })
    expect(violation.counts).toEqual({ site: 1 })
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

  test('a replayed batch number cuts the session and is audited; the next session resumes from what was published', async () => {
    const { id } = await agreement()
    const tag = 'replay'
    const first = await session(id)
    expect(first.ready.hw).toEqual({ tel: 0, std: 0, evt: 0 })
    const one = signedBatch(rogue.identity, batch(id, 1, readings(tag, [1, 2, 3])))
    await first.link.send(one)
    expect(await first.link.next()).toEqual({ t: 'ack', n: 1, credit: 1 })
    // The same batch again (the very same frame).
    await first.link.send(one)
    expect((await first.link.endedWithin(5_000))?.how).toBe('reset')
    expect(first.link.received).toHaveLength(2)
    first.link.abort()
    const violations = await waitAudit('transfer.violation', id)
    expect(violations[0]!.data.reason).toMatch(/replayed batch 1/)

    // A new session starts from what the consumer holds, and batch numbers start again at 1.
    const second = await session(id)
    expect(second.ready.hw).toEqual({ tel: 3, std: 0, evt: 0 })
    await second.link.send(signedBatch(rogue.identity, batch(id, 1, readings(tag, [4, 7]))))
    expect(await second.link.next()).toEqual({ t: 'ack', n: 1, credit: 1 })
    second.link.abort()
    const subjects = (await published(tag)).map((message) => message.subject).sort()
    expect(subjects).toEqual(
      [1, 2, 3, 4, 7].map((seq) => `oe.peer.rogue.tel.meter.${tag}-${seq}.power`).sort(),
    )
    await victimStillServes()
  })

  test('receipts hold the batches, records and bytes taken, the digest chain and the provider signature; audit verify checks them', async () => {
    const { id } = await agreement()
    const tag = 'receipt'
    const { link } = await session(id)
    const frames = [
      signedBatch(rogue.identity, batch(id, 1, readings(tag, [1, 2]))),
      signedBatch(rogue.identity, batch(id, 2, readings(tag, [3]))),
      signedBatch(rogue.identity, batch(id, 3, readings(tag, [4, 5, 6]))),
    ]
    for (const frame of frames) {
      await link.send(frame)
      expect(await link.next()).toMatchObject({ t: 'ack' })
    }
    link.abort()
    const receipts = await waitAudit('transfer.received', id)
    const sha = (...parts: Uint8Array[]) => {
      const hash = createHash('sha256')
      for (const part of parts) hash.update(part)
      return new Uint8Array(hash.digest())
    }
    let chain = new Uint8Array(32)
    for (const frame of frames) chain = sha(chain, sha(frame.body))
    const last = frames.at(-1)!
    // The three batches came within a second: one receipt covers them.
    expect(receipts).toHaveLength(1)
    expect(receipts[0]!.data).toEqual({
      id,
      peer: 'rogue',
      batches: [1, 3],
      records: 6,
      bytes: frames.reduce((sum, frame) => sum + frame.body.length, 0),
      prev: '0'.repeat(64),
      chain: Buffer.from(chain).toString('hex'),
      lastDigest: Buffer.from(sha(last.body)).toString('hex'),
      lastSig: Buffer.from(last.sig).toString('base64url'),
    })
    expect(
      verify(
        null,
        sha(last.body),
        createPublicKey(rogue.identity.privateKeyObject),
        Buffer.from(receipts[0]!.data.lastSig as string, 'base64url'),
      ),
    ).toBe(true)
    const verified = await runCli(['--data-dir', victim.dataDir, 'audit', 'verify', '--json'])
    expect(verified.code, verified.stderr).toBe(0)
    expect(JSON.parse(verified.stdout)).toMatchObject({ ok: true, receipts: expect.any(Number) })
    expect(JSON.parse(verified.stdout).receipts).toBeGreaterThanOrEqual(1)
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

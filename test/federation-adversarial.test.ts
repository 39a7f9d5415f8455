/**
 * A node under attack by a peer it knows (valid key, real libp2p) and by peers it does not:
 * forged, foreign and altered agreements, replays, broken frames, and tampering with the audit
 * log. Each is refused with a named reason and audited; the node keeps serving.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import {
  agreementId,
  base64url,
  encodeFrame,
  newAgreementBody,
  signId,
  signTermination,
} from '../federation/index.ts'
import { api, auditEntries, propose, waitAgreementState } from './helpers/federation.ts'
import { cleanupAll, type RunningNode, runCli, waitFor } from './helpers/node-process.ts'
import { newIdentity, type Rogue, startArena, startRogue } from './helpers/rogue-peer.ts'

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

const day = 86_400_000
const rogueParty = () => ({ org: 'Rogue', key: base64url(rogue.identity.publicKey) })
const victimParty = () => ({ org: 'Victim', key: victimKey })

function offer(
  options: {
    validUntil?: number
    provider?: { org: string; key: string }
    consumer?: { org: string; key: string }
  } = {},
) {
  return newAgreementBody({
    provider: options.provider ?? rogueParty(),
    consumer: options.consumer ?? victimParty(),
    purpose: 'adversarial test',
    validFrom: Date.now(),
    validUntil: options.validUntil ?? Date.now() + day,
    grants: [{ data: 'telemetry', kinds: ['meter'], quantities: ['power'] }],
  })
}

async function send(message: unknown) {
  return rogue.exchange(target, encodeFrame(message))
}

describe('forged and foreign agreements', () => {
  test('a body altered after signing is refused as a bad signature', async () => {
    const body = offer()
    const sig = signId(agreementId(body), rogue.identity)
    const result = await send({
      t: 'propose',
      doc: { body: { ...body, purpose: 'something else' }, signatures: { provider: sig } },
    })
    expect(result.reply).toMatchObject({ ok: false, error: 'BadSignatureError' })
  })

  test('an agreement signed by a third key is refused', async () => {
    const body = offer()
    const third = newIdentity()
    const result = await send({
      t: 'propose',
      doc: { body, signatures: { provider: signId(agreementId(body), third) } },
    })
    expect(result.reply).toMatchObject({ ok: false, error: 'BadSignatureError' })
  })

  test('an agreement naming neither party as this node is refused', async () => {
    const other = newIdentity()
    const body = offer({ consumer: { org: 'Elsewhere', key: base64url(other.publicKey) } })
    const result = await send({
      t: 'propose',
      doc: { body, signatures: { provider: signId(agreementId(body), rogue.identity) } },
    })
    expect(result.reply).toMatchObject({ ok: false, error: 'ForeignAgreementError' })
  })

  test('an agreement between this node and someone other than the sender is refused', async () => {
    const other = newIdentity()
    const body = offer({ provider: { org: 'Elsewhere', key: base64url(other.publicKey) } })
    const result = await send({
      t: 'propose',
      doc: { body, signatures: { provider: signId(agreementId(body), other) } },
    })
    expect(result.reply).toMatchObject({ ok: false, error: 'ForeignAgreementError' })
  })

  test('an unsigned agreement is refused', async () => {
    const result = await send({ t: 'propose', doc: { body: offer(), signatures: {} } })
    expect(result.reply).toMatchObject({ ok: false, error: 'BadSignatureError' })
  })

  test('none of the refused agreements was stored, and each refusal was audited', async () => {
    const list = await api<{ id: string }[]>(victim, 'GET', '/v1/agreements')
    expect(list).toEqual([])
    const refusals = (await auditEntries(victim)).filter((e) => e.type === 'agreement.message_refused')
    expect(refusals.length).toBeGreaterThanOrEqual(5)
    expect(refusals.every((e) => e.data.peer === 'rogue')).toBe(true)
  })
})

describe('expiry and replays', () => {
  test('accepting a proposal that has expired is refused', async () => {
    const body = offer({ validUntil: Date.now() + 1_500 })
    const id = agreementId(body)
    expect(
      (await send({ t: 'propose', doc: { body, signatures: { provider: signId(id, rogue.identity) } } }))
        .reply,
    ).toEqual({ ok: true })
    await waitAgreementState(victim, id, 'expired', 5_000)
    const accept = await runCli(['--data-dir', victim.dataDir, '--json', 'agreement', 'accept', id])
    expect(accept.code).toBe(1)
    expect(accept.stderr).toContain('AgreementExpiredError')
  })

  test('a proposal that arrives already expired is refused', async () => {
    const body = newAgreementBody({
      provider: rogueParty(),
      consumer: victimParty(),
      purpose: 'stale',
      validFrom: Date.now() - 2 * day,
      validUntil: Date.now() - day,
      grants: [{ data: 'events', kinds: ['evse'], types: ['fault'] }],
    })
    const result = await send({
      t: 'propose',
      doc: { body, signatures: { provider: signId(agreementId(body), rogue.identity) } },
    })
    expect(result.reply).toMatchObject({ ok: false, error: 'AgreementExpiredError' })
  })

  test('a replayed proposal and a replayed revocation change nothing', async () => {
    const body = offer()
    const id = agreementId(body)
    const message = { t: 'propose', doc: { body, signatures: { provider: signId(id, rogue.identity) } } }
    expect((await send(message)).reply).toEqual({ ok: true })
    expect((await send(message)).reply).toEqual({ ok: true })
    await api(victim, 'POST', `/v1/agreements/${id}/accept`)
    expect((await send(message)).reply).toEqual({ ok: true })
    const list = await api<{ id: string; state: string }[]>(victim, 'GET', '/v1/agreements')
    expect(list.filter((a) => a.id === id)).toEqual([expect.objectContaining({ id, state: 'active' })])
    const revocation = signTermination('revoke', id, 'replay test', rogue.identity)
    expect((await send({ t: 'revoke', revocation })).reply).toEqual({ ok: true })
    expect((await send({ t: 'revoke', revocation })).reply).toEqual({ ok: true })
    // A replayed proposal cannot bring a revoked agreement back.
    expect((await send(message)).reply).toEqual({ ok: true })
    expect((await api<{ state: string }>(victim, 'GET', `/v1/agreements/${id}`)).state).toBe('revoked')
    const revoked = (await auditEntries(victim)).filter(
      (e) => e.type === 'agreement.revoked' && e.data.id === id,
    )
    expect(revoked).toHaveLength(1)
  })

  test('a revocation signed by another key is refused', async () => {
    const body = offer()
    const id = agreementId(body)
    await send({ t: 'propose', doc: { body, signatures: { provider: signId(id, rogue.identity) } } })
    await api(victim, 'POST', `/v1/agreements/${id}/accept`)
    const forged = {
      ...signTermination('revoke', id, 'forged', newIdentity()),
      by: base64url(rogue.identity.publicKey),
    }
    expect((await send({ t: 'revoke', revocation: forged })).reply).toMatchObject({
      ok: false,
      error: 'BadSignatureError',
    })
    expect((await api<{ state: string }>(victim, 'GET', `/v1/agreements/${id}`)).state).toBe('active')
  })
})

describe('broken frames', () => {
  const cases: [string, Uint8Array][] = [
    ['random bytes', new Uint8Array(Array.from({ length: 300 }, (_, i) => (i * 73 + 11) % 256))],
    ['a truncated frame', encodeFrame({ t: 'accept', id: 'a'.repeat(64), sig: 'x' }).slice(0, 20)],
    ['an oversized frame', new Uint8Array([0xff, 0xff, 0xff, 0x7f, 1, 2, 3])],
    ['a frame that is not CBOR', new Uint8Array([5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb])],
    [
      'two frames on one stream',
      (() => {
        const frame = encodeFrame({ t: 'accept', id: 'b'.repeat(64), sig: 'x' })
        const both = new Uint8Array(frame.length * 2)
        both.set(frame)
        both.set(frame, frame.length)
        return both
      })(),
    ],
  ]

  test.each(cases)('%s: the stream is reset and the node keeps serving its peers', async (_name, bytes) => {
    const before = (await auditEntries(victim)).filter((e) => e.type === 'protocol.bad_frame').length
    const result = await rogue.exchange(target, bytes)
    expect(result.reply).toBeUndefined()
    expect(result.reset).toBe(true)
    await waitFor(
      async () => (await auditEntries(victim)).filter((e) => e.type === 'protocol.bad_frame').length > before,
      5_000,
      'the bad frame to be audited',
    )
    // The same connection still works for a well-formed message…
    const body = offer()
    const ok = await send({
      t: 'propose',
      doc: { body, signatures: { provider: signId(agreementId(body), rogue.identity) } },
    })
    expect(ok.reply).toEqual({ ok: true })
    // …and the other peers are served as before.
    const id = await propose(honest, 'victim')
    await waitAgreementState(victim, id, 'proposed')
    expect((await victim.fetch('/readyz')).status).toBe(200)
  })
})

describe('unknown peers and the audit log', () => {
  test('an unknown peer dialling in is refused before any protocol runs, and audited', async () => {
    const stranger = await startRogue('Stranger')
    try {
      const result = await stranger.exchange(target, encodeFrame({ t: 'propose', doc: {} }))
      expect(result.reply).toBeUndefined()
      expect(result.error).toBeDefined()
      const refused = (await auditEntries(victim)).filter((e) => e.type === 'connection.refused')
      expect(refused.some((e) => e.data.peerId === stranger.node.peerId.toString())).toBe(true)
    } finally {
      await stranger.stop()
    }
  })

  test('audit verify passes on the live log, and fails naming the entry once a line is altered', async () => {
    const ok = await runCli(['--data-dir', victim.dataDir, '--json', 'audit', 'verify'])
    expect(ok.code).toBe(0)
    expect(JSON.parse(ok.stdout)).toMatchObject({ ok: true })
    expect(await victim.stop()).toBe(0)
    const file = join(victim.dataDir, 'audit', 'audit.log')
    const lines = (await readFile(file, 'utf8')).split('\n')
    const index = lines.findIndex((line) => line.includes('"agreement.message_refused"'))
    expect(index).toBeGreaterThanOrEqual(0)
    lines[index] = lines[index]!.replace('"peer":"rogue"', '"peer":"honest"')
    await writeFile(file, lines.join('\n'))
    const broken = await runCli(['--data-dir', victim.dataDir, '--json', 'audit', 'verify'])
    expect(broken.code).toBe(1)
    const result = JSON.parse(broken.stdout)
    expect(result).toMatchObject({ ok: false, firstBad: { line: index + 1 } })
    expect(result.firstBad.reason).toMatch(/hash does not match/)
  })
})

/**
 * Peering and the agreement lifecycle between real node processes over libp2p on loopback:
 * what two (or three) organisations' operators would see.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, describe, expect, test } from 'vitest'
import {
  type AgreementJson,
  agreementState,
  api,
  auditEntries,
  call,
  cardOf,
  type PeerJson,
  peer,
  peerState,
  propose,
  waitAgreementState,
  waitPeerState,
} from './helpers/federation.ts'
import {
  cleanupAll,
  type RunningNode,
  runCli,
  scrapeMetric,
  startNode,
  tempDir,
  waitFor,
} from './helpers/node-process.ts'

afterEach(cleanupAll)

const startOrg = (org: string, dataDir?: string) =>
  startNode({ ...(dataDir ? { dataDir } : { config: `org = "${org}"\n` }) })

/** How many connections from `peerId` the node's gate refused (its audit log). */
async function refusalsOf(node: RunningNode, peerId: string): Promise<number> {
  return (await auditEntries(node)).filter(
    (entry) => entry.type === 'connection.refused' && entry.data.peerId === peerId,
  ).length
}

describe('peering', () => {
  test('two nodes that add each other’s cards connect and report RTT', async () => {
    const [a, b] = await Promise.all([startOrg('Gridco'), startOrg('ChargeCo')])
    const added = await runCli([
      '--data-dir',
      a.dataDir,
      '--json',
      'peers',
      'add',
      await cardOf(b),
      '--alias',
      'chargeco',
    ])
    expect(added.code).toBe(0)
    expect(JSON.parse(added.stdout)).toMatchObject({ alias: 'chargeco', org: 'ChargeCo' })
    // Until B adds A, B's gate refuses A: A dials, B refuses and audits it, nothing connects.
    const aPeerId = (await api<{ peerId: string }>(a, 'GET', '/v1/status')).peerId
    await waitFor(async () => (await refusalsOf(b, aPeerId)) > 0, 10_000, 'B to refuse a connection from A')
    expect(await peerState(a, 'chargeco')).not.toBe('connected')
    await api(b, 'POST', '/v1/peers', { card: await cardOf(a), alias: 'gridco' })
    await waitPeerState(a, 'chargeco', 'connected')
    await waitPeerState(b, 'gridco', 'connected')
    const list = JSON.parse(
      (await runCli(['--data-dir', a.dataDir, '--json', 'peers', 'list'])).stdout,
    ) as PeerJson[]
    expect(list).toHaveLength(1)
    expect(list[0]).toMatchObject({ alias: 'chargeco', org: 'ChargeCo', state: 'connected' })
    // The first ping comes within the ping interval of connecting.
    let rttMs: number | null | undefined
    await waitFor(
      async () => {
        rttMs = (await api<PeerJson[]>(a, 'GET', '/v1/peers'))[0]?.rttMs
        return typeof rttMs === 'number'
      },
      10_000,
      'a round-trip time',
    )
    expect(rttMs).toBeGreaterThanOrEqual(0)
    expect(rttMs).toBeLessThan(3_000)
  })

  test('a bad card or alias is refused with a named error', async () => {
    const [a, b] = await Promise.all([startOrg('A'), startOrg('B')])
    const card = await cardOf(b)
    const tampered = `${card.slice(0, 40)}${card[40] === 'A' ? 'B' : 'A'}${card.slice(41)}`
    expect((await call(a, 'POST', '/v1/peers', { card: tampered, alias: 'bee' })).body).toMatchObject({
      error: 'CardError',
    })
    expect((await call(a, 'POST', '/v1/peers', { card, alias: 'Bad Alias' })).body).toMatchObject({
      error: 'AgreementFormatError',
    })
    expect((await call(a, 'POST', '/v1/peers', { card: await cardOf(a), alias: 'me' })).status).toBe(409)
    expect((await call(a, 'POST', '/v1/peers', { card, alias: 'bee' })).status).toBe(201)
    expect((await call(a, 'POST', '/v1/peers', { card, alias: 'bee2' })).body).toMatchObject({
      error: 'PeerExistsError',
    })
  })

  test('peers remove disconnects at once and the peer can no longer connect', async () => {
    const [a, b] = await Promise.all([startOrg('A'), startOrg('B')])
    await peer(a, 'bee', b, 'ay')
    const bPeerId = (await api<{ peerId: string }>(b, 'GET', '/v1/status')).peerId
    const refusedBefore = await refusalsOf(a, bPeerId)
    const removed = await runCli(['--data-dir', a.dataDir, 'peers', 'remove', 'bee'])
    expect(removed.code).toBe(0)
    await waitPeerState(b, 'ay', 'disconnected', 5_000)
    // B, which still knows A, dials again; A refuses it and audits that. After such a refusal,
    // B is still not connected.
    await waitFor(
      async () => (await refusalsOf(a, bPeerId)) > refusedBefore,
      15_000,
      'A to refuse a connection from B',
    )
    expect(await peerState(b, 'ay')).not.toBe('connected')
    expect((await auditEntries(a)).map((e) => e.type)).toContain('peer.removed')
  })
})

describe('a peer that is refused', () => {
  // Regression: the dialling node counted a session the far side refused as connected, so its
  // backoff never grew: it redialled about 4 times a second, forever, and the refusing node wrote
  // an audit entry and a warn line for each (about 1.4 KB/s of audit log per stranger's key).
  test('backs off, and the refusing node audits it once per interval, not once per attempt', async () => {
    const [a, b] = await Promise.all([startOrg('A'), startOrg('B')])
    // Only A adds B: B's gate refuses every connection from A.
    await api(a, 'POST', '/v1/peers', { card: await cardOf(b), alias: 'bee' })
    const aPeerId = (await api<{ peerId: string }>(a, 'GET', '/v1/status')).peerId
    await waitFor(async () => (await refusalsOf(b, aPeerId)) > 0, 10_000, 'B to refuse A')
    const first = Date.now()
    const refused = () => scrapeMetric(b, 'oe_federation_connections_refused')
    // Six more attempts at least, so the count below covers the backoff's growth.
    await waitFor(async () => ((await refused()) ?? 0) >= 6, 30_000, 'A to try again')
    const elapsedS = (Date.now() - first) / 1000
    const attempts = (await refused()) ?? 0
    // With backoff 0.25, 0.5, 1, 2, 4 s …, six attempts take about 8 s; without, about 1.5 s.
    expect(elapsedS, `${attempts} attempts in ${elapsedS} s`).toBeGreaterThan(5)
    // One audit entry for all of them (the rest are counted into one entry a minute).
    expect(await refusalsOf(b, aPeerId)).toBe(1)
    expect(await peerState(a, 'bee')).not.toBe('connected')
  }, 60_000)
})

describe('agreement lifecycle', () => {
  test('propose, then accept with the CLI: active on both, with the documented list shape', async () => {
    const [a, b] = await Promise.all([startOrg('Gridco'), startOrg('ChargeCo')])
    await peer(a, 'chargeco', b, 'gridco')
    const proposed = await runCli([
      '--data-dir',
      a.dataDir,
      '--json',
      'agreement',
      'propose',
      '--peer',
      'chargeco',
      '--grant',
      'telemetry:kinds=evse;quantities=power,energy_import;minInterval=60s',
      '--grant',
      'standing:kinds=evse;attrs=maxPowerW',
      '--purpose',
      'network planning',
      '--valid-until',
      new Date(Date.now() + 86_400_000).toISOString(),
    ])
    expect(proposed.code).toBe(0)
    const { id, state } = JSON.parse(proposed.stdout) as { id: string; state: string }
    expect(state).toBe('proposed')
    expect(id).toMatch(/^[0-9a-f]{64}$/)
    await waitAgreementState(b, id, 'proposed')
    const pending = JSON.parse(
      (await runCli(['--data-dir', b.dataDir, '--json', 'agreement', 'list'])).stdout,
    ) as AgreementJson[]
    expect(pending).toHaveLength(1)
    expect(pending[0]).toMatchObject({
      id,
      state: 'proposed',
      role: 'provider',
      peer: 'gridco',
      awaitingUs: true,
    })
    expect(Object.keys(pending[0]!)).toEqual(
      expect.arrayContaining(['id', 'state', 'role', 'peer', 'validFrom', 'validUntil', 'grants']),
    )
    const show = await runCli(['--data-dir', b.dataDir, 'agreement', 'show', id.slice(0, 10)])
    expect(show.stdout).toContain('Gridco receives power and energy_import readings of ChargeCo')
    expect(show.stdout).toContain('at most one per 1 min')
    // The proposer cannot accept its own proposal.
    expect((await runCli(['--data-dir', a.dataDir, 'agreement', 'accept', id])).code).toBe(1)
    const accepted = await runCli(['--data-dir', b.dataDir, '--json', 'agreement', 'accept', id])
    expect(JSON.parse(accepted.stdout)).toEqual({ id, state: 'active' })
    await waitAgreementState(a, id, 'active')
    const listA = JSON.parse(
      (await runCli(['--data-dir', a.dataDir, '--json', 'agreement', 'list'])).stdout,
    ) as AgreementJson[]
    expect(listA[0]).toMatchObject({
      id,
      state: 'active',
      role: 'consumer',
      peer: 'chargeco',
      awaitingUs: false,
    })
    expect(listA[0]!.grants).toHaveLength(2)
    expect((await auditEntries(a)).map((e) => e.type)).toEqual(
      expect.arrayContaining(['agreement.proposed', 'agreement.active']),
    )
  })

  test('propose, then reject: rejected on both', async () => {
    const [a, b] = await Promise.all([startOrg('A'), startOrg('B')])
    await peer(a, 'bee', b, 'ay')
    const id = await propose(a, 'bee', { offer: true })
    await waitAgreementState(b, id, 'proposed')
    const rejected = await runCli([
      '--data-dir',
      b.dataDir,
      '--json',
      'agreement',
      'reject',
      id,
      '--reason',
      'not now',
    ])
    expect(JSON.parse(rejected.stdout)).toEqual({ id, state: 'rejected' })
    await waitAgreementState(a, id, 'rejected')
    const detail = await api<{ rejection: { reason: string } }>(a, 'GET', `/v1/agreements/${id}`)
    expect(detail.rejection.reason).toBe('not now')
    // A rejected proposal can no longer be accepted.
    expect((await call(b, 'POST', `/v1/agreements/${id}/accept`)).body).toMatchObject({
      error: 'AgreementStateError',
    })
  })

  test.each([
    ['the provider', false],
    ['the consumer', true],
  ])('revoke by %s ends it on both nodes', async (_who, byProposer) => {
    const [a, b] = await Promise.all([startOrg('A'), startOrg('B')])
    await peer(a, 'bee', b, 'ay')
    const id = await propose(a, 'bee')
    await waitAgreementState(b, id, 'proposed')
    await api(b, 'POST', `/v1/agreements/${id}/accept`)
    await waitAgreementState(a, id, 'active')
    const [revoker, other] = byProposer ? [a, b] : [b, a]
    const result = await api<{ state: string }>(revoker, 'POST', `/v1/agreements/${id}/revoke`, {
      reason: 'contract ended',
    })
    expect(result.state).toBe('revoked')
    await waitAgreementState(other, id, 'revoked', 5_000)
    const detail = await api<{ revocation: { reason: string } }>(other, 'GET', `/v1/agreements/${id}`)
    expect(detail.revocation.reason).toBe('contract ended')
    // Revoking again is harmless.
    expect((await call(other, 'POST', `/v1/agreements/${id}/revoke`, {})).body).toMatchObject({
      state: 'revoked',
    })
  })

  test('an agreement expires on both nodes while they run', async () => {
    const [a, b] = await Promise.all([startOrg('A'), startOrg('B')])
    await peer(a, 'bee', b, 'ay')
    const id = await propose(a, 'bee', { validUntil: Date.now() + 4_000 })
    await waitAgreementState(b, id, 'proposed')
    await api(b, 'POST', `/v1/agreements/${id}/accept`)
    await waitAgreementState(a, id, 'active')
    await waitAgreementState(a, id, 'expired', 8_000)
    await waitAgreementState(b, id, 'expired', 2_000)
    for (const node of [a, b]) {
      await waitFor(
        async () =>
          (await auditEntries(node)).some((e) => e.type === 'agreement.expired' && e.data.id === id),
        5_000,
        'the expiry in the audit log',
      )
    }
  })

  test('an agreement expires while one node is down, and both agree after it returns', async () => {
    const [a, b] = await Promise.all([startOrg('A'), startOrg('B')])
    await peer(a, 'bee', b, 'ay')
    const id = await propose(a, 'bee', { validUntil: Date.now() + 5_000 })
    await waitAgreementState(b, id, 'proposed')
    await api(b, 'POST', `/v1/agreements/${id}/accept`)
    await waitAgreementState(a, id, 'active')
    expect(await b.stop()).toBe(0)
    await waitAgreementState(a, id, 'expired', 10_000)
    const b2 = await startNode({ dataDir: b.dataDir })
    expect(await agreementState(b2, id)).toBe('expired')
  })

  test('a restart of either node keeps peers and agreements, and they reconnect', async () => {
    const [a, b] = await Promise.all([startOrg('A'), startOrg('B')])
    await peer(a, 'bee', b, 'ay')
    const active = await propose(a, 'bee')
    const pending = await propose(a, 'bee', { offer: true })
    await waitAgreementState(b, pending, 'proposed')
    await api(b, 'POST', `/v1/agreements/${active}/accept`)
    await waitAgreementState(a, active, 'active')
    expect(await a.stop()).toBe(0)
    const a2 = await startNode({ dataDir: a.dataDir })
    expect(await agreementState(a2, active)).toBe('active')
    expect(await agreementState(a2, pending)).toBe('proposed')
    await waitPeerState(a2, 'bee', 'connected')
    await waitPeerState(b, 'ay', 'connected')
    // Both came up on new ports (port 0): B finds A again only through the address A announced
    // after the restart, which B keeps once identify has run.
    const a2Addr = (await api<{ addrs: string[] }>(a2, 'GET', '/v1/status')).addrs[0]!
    await waitFor(
      async () =>
        (await api<{ alias: string; addrs: string[] }[]>(b, 'GET', '/v1/peers'))[0]!.addrs.includes(a2Addr),
      10_000,
      'B to learn A’s new address',
    )
    expect(await b.stop()).toBe(0)
    const b2 = await startNode({ dataDir: b.dataDir })
    expect(await agreementState(b2, active)).toBe('active')
    // The pending proposal can still be accepted after both restarts.
    await api(b2, 'POST', `/v1/agreements/${pending}/accept`)
    await waitAgreementState(a2, pending, 'active')
  })

  test('a proposal made while the partner is offline arrives when it comes back', async () => {
    const [a, b] = await Promise.all([startOrg('A'), startOrg('B')])
    await peer(a, 'bee', b, 'ay')
    expect(await b.stop()).toBe(0)
    await waitPeerState(a, 'bee', 'disconnected')
    const id = await propose(a, 'bee')
    const detail = await api<{ outbox: { pending: number } }>(a, 'GET', `/v1/agreements/${id}`)
    expect(detail.outbox.pending).toBe(1)
    const b2 = await startNode({ dataDir: b.dataDir })
    await waitAgreementState(b2, id, 'proposed')
    await api(b2, 'POST', `/v1/agreements/${id}/accept`)
    await waitAgreementState(a, id, 'active')
    expect(
      (await api<{ outbox: { pending: number } }>(a, 'GET', `/v1/agreements/${id}`)).outbox.pending,
    ).toBe(0)
  })

  test('with three nodes, an agreement between A and B is invisible to C', async () => {
    const [a, b, c] = await Promise.all([startOrg('A'), startOrg('B'), startOrg('C')])
    await peer(a, 'bee', b, 'ay')
    await peer(a, 'cee', c, 'ay')
    await peer(b, 'cee', c, 'bee')
    const id = await propose(a, 'bee')
    await waitAgreementState(b, id, 'proposed')
    await api(b, 'POST', `/v1/agreements/${id}/accept`)
    await waitAgreementState(a, id, 'active')
    // A sentinel: a proposal from A to C, made after the A–B agreement was active. C's list and
    // audit log hold it, and nothing of the other.
    const toC = await propose(a, 'cee')
    await waitAgreementState(c, toC, 'proposed')
    expect((await api<AgreementJson[]>(c, 'GET', '/v1/agreements')).map((agreement) => agreement.id)).toEqual(
      [toC],
    )
    expect((await call(c, 'GET', `/v1/agreements/${id}`)).status).toBe(404)
    const auditOfC = (await auditEntries(c)).map((entry) => JSON.stringify(entry))
    expect(auditOfC.some((entry) => entry.includes(toC))).toBe(true)
    expect(auditOfC.some((entry) => entry.includes(id))).toBe(false)
  })
})

describe('agreements as documents', () => {
  test('export, mail and import: checked like the wire, and both sides converge', async () => {
    const [a, b] = await Promise.all([startOrg('A'), startOrg('B')])
    // A knows B; B does not know A yet, so B's gate refuses A and nothing arrives by network.
    await api(a, 'POST', '/v1/peers', { card: await cardOf(b), alias: 'bee' })
    const id = await propose(a, 'bee')
    const exported = await runCli(['--data-dir', a.dataDir, 'agreement', 'export', id.slice(0, 12)])
    expect(exported.code).toBe(0)
    expect(exported.stdout).toContain('-----BEGIN OE AGREEMENT-----')
    expect(exported.stdout).toContain(`Id: ${id}`)
    // Mail quoting and CRLF line ends do not matter.
    const mailed = exported.stdout
      .split('\n')
      .map((line) => `> ${line}`)
      .join('\r\n')
    const file = join(await tempDir(), 'proposal.txt')
    await writeFile(file, mailed)
    const refused = await runCli(['--data-dir', b.dataDir, '--json', 'agreement', 'import', file])
    expect(refused.code).toBe(1)
    expect(JSON.parse(refused.stderr)).toMatchObject({ error: 'ApiError' })
    expect(refused.stderr).toContain('UnknownPeerError')
    await api(b, 'POST', '/v1/peers', { card: await cardOf(a), alias: 'ay' })
    const imported = await runCli(['--data-dir', b.dataDir, '--json', 'agreement', 'import', file])
    expect(imported.code).toBe(0)
    expect(JSON.parse(imported.stdout)).toMatchObject({ id, state: 'proposed' })
    expect(
      JSON.parse((await runCli(['--data-dir', b.dataDir, '--json', 'agreement', 'accept', id])).stdout).state,
    ).toBe('active')
    const signed = await runCli(['--data-dir', b.dataDir, 'agreement', 'export', id])
    const back = await runCli(['--data-dir', a.dataDir, '--json', 'agreement', 'import', '-'], {
      input: signed.stdout,
    })
    expect(back.code).toBe(0)
    expect(JSON.parse(back.stdout)).toMatchObject({ id, state: 'active', created: false })
    await waitAgreementState(b, id, 'active')
  })

  test('an altered export is refused', async () => {
    const [a, b] = await Promise.all([startOrg('A'), startOrg('B')])
    await peer(a, 'bee', b, 'ay')
    const id = await propose(a, 'bee')
    const text = await api<string>(a, 'GET', `/v1/agreements/${id}/export`)
    const lines = text.split('\n')
    const target = lines.findIndex((line, index) => index > 5 && line.length > 20)
    const line = lines[target]!
    lines[target] = `${line.slice(0, 10)}${line[10] === 'Q' ? 'R' : 'Q'}${line.slice(11)}`
    const result = await call(b, 'POST', '/v1/agreements/import', lines.join('\n'))
    expect(result.status).toBe(400)
    expect(['BadSignatureError', 'AgreementFormatError', 'FederationError']).toContain(result.body?.error)
  })
})

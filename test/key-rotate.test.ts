/**
 * Key rotation between real node processes (`oe-node key rotate`): the provider A rotates its
 * key while records flow to the consumer B under an active agreement. B moves A to the new key
 * under the same alias, the link comes back under the new key, the agreement stays active and
 * nothing is lost or duplicated; both audit logs verify; after the grace B refuses the old key.
 * A peer that was offline at the rotation is told by a courier when it returns; forged
 * statements are refused with a named reason and change nothing.
 */
import { chmod, copyFile, mkdir, readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, describe, expect, test } from 'vitest'
import { base64url, encodeFrame, signSuccession } from '../federation/index.ts'
import { loadIdentity } from '../node/index.ts'
import {
  api,
  auditEntries,
  cardOf,
  type PeerJson,
  peerState,
  waitAgreementState,
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
import { newIdentity, startRogue } from './helpers/rogue-peer.ts'
import {
  CONSUMER_ALIAS,
  compare,
  flowOf,
  PROVIDER_ALIAS,
  ranges,
  startPair,
  TelemetryFeeder,
  valuesOn,
  waitPeerCount,
} from './helpers/transfer.ts'

afterEach(cleanupAll)

interface RotationJson {
  org: string
  from: { peerId: string; publicKey: string }
  to: { peerId: string; publicKey: string }
  oldKeyAcceptedUntil: string
  graceSeconds: number
  retiredKeyFile: string
  notified: string[]
  pending: string[]
}

async function rotate(node: RunningNode, grace?: string): Promise<RotationJson> {
  const result = await runCli(
    [
      '--data-dir',
      node.dataDir,
      '--json',
      'key',
      'rotate',
      ...(grace === undefined ? [] : ['--grace', grace]),
    ],
    { timeoutMs: 60_000 },
  )
  expect(result.stderr).toBe('')
  expect(result.code).toBe(0)
  return JSON.parse(result.stdout) as RotationJson
}

async function peerOf(node: RunningNode, alias: string): Promise<PeerJson | undefined> {
  return (await api<PeerJson[]>(node, 'GET', '/v1/peers')).find((peer) => peer.alias === alias)
}

/** B knows `alias` by `peerId` and is connected to it. */
async function waitConnectedAs(node: RunningNode, alias: string, peerId: string): Promise<void> {
  let last: PeerJson | undefined
  await waitFor(
    async () => {
      last = await peerOf(node, alias)
      return last?.peerId === peerId && last.state === 'connected'
    },
    20_000,
    `${alias} to be connected as ${peerId} (is ${last?.peerId} ${last?.state})`,
  )
}

async function auditVerify(
  node: RunningNode,
): Promise<{ ok: boolean; receipts: number; checkpoints: number }> {
  const result = await runCli(['--data-dir', node.dataDir, '--json', 'audit', 'verify'])
  expect(result.stdout).toMatch(/"ok":true/)
  expect(result.code).toBe(0)
  return JSON.parse(result.stdout)
}

describe('oe-node key rotate', () => {
  test('with --grace 0 while records flow: same alias, new key, agreement active, nothing lost, old key refused', async () => {
    const { provider: a, consumer: b, id } = await startPair()
    const before = await api<{ peerId: string }>(a, 'GET', '/v1/status')
    const feeder = new TelemetryFeeder(a, { total: 4_000, batch: 20, pauseMs: 20 }).start()
    await feeder.whenAccepted(400)

    const rotation = await rotate(a, '0')
    const fedBeforeSwitch = feeder.sent
    expect(rotation.from.peerId).toBe(before.peerId)
    expect(rotation.to.peerId).not.toBe(before.peerId)
    expect(rotation).toMatchObject({
      org: 'Provider',
      graceSeconds: 0,
      notified: [CONSUMER_ALIAS],
      pending: [],
    })
    // The new key replaced node.key; the old one is kept beside it; both only for the owner.
    const keys = join(a.dataDir, 'keys')
    expect((await stat(join(keys, 'node.key'))).mode & 0o777).toBe(0o600)
    expect((await stat(rotation.retiredKeyFile)).mode & 0o777).toBe(0o600)
    expect(rotation.retiredKeyFile.startsWith(keys)).toBe(true)
    expect((await readdir(keys)).filter((name) => name.endsWith('.retired'))).toHaveLength(1)
    expect(base64url((await loadIdentity(join(keys, 'node.key'))).publicKey)).toBe(rotation.to.publicKey)
    expect(base64url((await loadIdentity(rotation.retiredKeyFile)).publicKey)).toBe(rotation.from.publicKey)

    // A is its new key; B knows it under the same alias and the link is back under it.
    expect((await api<{ peerId: string }>(a, 'GET', '/v1/status')).peerId).toBe(rotation.to.peerId)
    expect((await api<{ card: { peerId: string } }>(a, 'GET', '/v1/card')).card.peerId).toBe(
      rotation.to.peerId,
    )
    await waitConnectedAs(b, PROVIDER_ALIAS, rotation.to.peerId)
    await waitConnectedAs(a, CONSUMER_ALIAS, (await peerOf(a, CONSUMER_ALIAS))!.peerId)
    expect((await peerOf(b, PROVIDER_ALIAS))?.org).toBe('Provider')

    // The agreement carries on without a new proposal: every record arrives once.
    await feeder.done()
    expect(feeder.errors).toEqual([])
    expect(feeder.uncertain.size).toBe(0)
    await waitAgreementState(a, id, 'active')
    await waitAgreementState(b, id, 'active')
    const arrived = await waitPeerCount(() => b, feeder.accepted.size, { timeoutMs: 30_000 })
    expect(arrived.count).toBe(feeder.accepted.size)
    const stored = await valuesOn(a, 'oe.tel.meter.>')
    const received = await valuesOn(b, `oe.peer.${PROVIDER_ALIAS}.>`)
    const result = compare(feeder.accepted, stored, received)
    expect(ranges(result.lost)).toBe('')
    expect(result.duplicated).toEqual([])
    expect(result.unexpected).toEqual([])
    expect(result.lostAtProvider).toEqual([])
    // Thousands of them were fed after the switch, under the new key.
    expect(received.filter((record) => record.v >= fedBeforeSwitch).length).toBeGreaterThan(1_000)
    expect((await flowOf(b, id)).sessions).toBeGreaterThanOrEqual(2)

    // Both audit logs record it.
    const rotated = (await auditEntries(a)).find((entry) => entry.type === 'key.rotated')
    expect(rotated?.data).toMatchObject({ fromPeerId: rotation.from.peerId, toPeerId: rotation.to.peerId })
    const succeeded = (await auditEntries(b)).find((entry) => entry.type === 'peer.key_succeeded')
    expect(succeeded?.data).toMatchObject({
      peer: PROVIDER_ALIAS,
      from: rotation.from.peerId,
      to: rotation.to.peerId,
    })

    // A node presenting A's old key (its retired key file in a fresh data dir) is refused by B.
    const impostorDir = await tempDir()
    await mkdir(join(impostorDir, 'keys'), { mode: 0o700 })
    await copyFile(rotation.retiredKeyFile, join(impostorDir, 'keys', 'node.key'))
    await chmod(join(impostorDir, 'keys', 'node.key'), 0o600)
    const impostor = await startNode({ dataDir: impostorDir, config: 'org = "Provider"\n' })
    expect((await api<{ peerId: string }>(impostor, 'GET', '/v1/status')).peerId).toBe(rotation.from.peerId)
    const refusedBefore = (await scrapeMetric(b, 'oe_federation_connections_refused')) ?? 0
    await api(impostor, 'POST', '/v1/peers', { card: await cardOf(b), alias: CONSUMER_ALIAS })
    await waitFor(
      async () =>
        (await auditEntries(b)).some(
          (entry) => entry.type === 'connection.refused' && entry.data.peerId === rotation.from.peerId,
        ),
      15_000,
      'B to refuse the old key',
    )
    const refusal = (await auditEntries(b)).find(
      (entry) => entry.type === 'connection.refused' && entry.data.peerId === rotation.from.peerId,
    )
    expect(refusal?.data.reason).toMatch(/retired key of prov/)
    expect((await scrapeMetric(b, 'oe_federation_connections_refused')) ?? 0).toBeGreaterThan(refusedBefore)
    expect(await peerState(impostor, CONSUMER_ALIAS)).not.toBe('connected')
    // B still serves A under its new key.
    expect((await peerOf(b, PROVIDER_ALIAS))?.state).toBe('connected')

    // audit verify passes on both, offline, after a clean stop (checkpoints by the new key).
    await impostor.stop()
    expect(await a.stop()).toBe(0)
    expect(await b.stop()).toBe(0)
    await auditVerify(a)
    expect((await auditVerify(b)).receipts).toBeGreaterThan(0)
  }, 120_000)

  test('a peer offline at the rotation is told by a courier when it returns; forged statements change nothing', async () => {
    const pair = await startPair()
    const { provider: a, id } = pair
    let b = pair.consumer
    expect(await b.stop()).toBe(0)
    const rotation = await rotate(a)
    expect(rotation).toMatchObject({ notified: [], pending: [CONSUMER_ALIAS], graceSeconds: 86_400 })
    // Records fed while B is away wait in A's stream.
    const feeder = new TelemetryFeeder(a, { total: 500, batch: 50, pauseMs: 10 }).start()
    await feeder.done()

    b = await startNode({ dataDir: b.dataDir, args: pair.consumerArgs })
    // B's gate knows only A's old key: the courier (keyed by it) delivers the statement, and the
    // link comes back under the new key.
    await waitConnectedAs(b, PROVIDER_ALIAS, rotation.to.peerId)
    const view = await peerOf(b, PROVIDER_ALIAS)
    expect((view as PeerJson & { retired?: { peerId: string }[] }).retired?.[0]?.peerId).toBe(
      rotation.from.peerId,
    )
    await waitAgreementState(b, id, 'active')
    const arrived = await waitPeerCount(() => b, feeder.accepted.size, { timeoutMs: 30_000 })
    expect(arrived.count).toBe(feeder.accepted.size)

    // A peer of B sends forged statements: each is refused with its reason; nothing changes.
    const rogue = await startRogue('Rogue')
    try {
      await api(b, 'POST', '/v1/peers', { card: rogue.card, alias: 'rogue' })
      const target = (await api<{ addrs: string[] }>(b, 'GET', '/v1/status')).addrs[0]!
      const peersBefore = await api<PeerJson[]>(b, 'GET', '/v1/peers')
      const send = (succession: unknown) =>
        rogue.exchange(target, encodeFrame({ t: 'succession', succession }))
      // Bad signature: the rogue claims to rotate A's (current) key.
      const stranger = newIdentity()
      const forged = signSuccession({ org: 'Provider', from: stranger, to: newIdentity(), graceMs: 0 })
      const badSignature = await send({ ...forged, from: rotation.to.publicKey })
      expect(badSignature.reply).toMatchObject({ ok: false, error: 'SuccessionSignatureError' })
      // Well signed, but for a key that is no peer's.
      const unknown = await send(
        signSuccession({ org: 'Rogue', from: stranger, to: newIdentity(), graceMs: 0 }),
      )
      expect(unknown.reply).toMatchObject({ ok: false, error: 'SuccessionUnknownPeerError' })
      // Well signed by A's old key (retired), for another successor: not the sender's current key.
      const retired = await loadIdentity(rotation.retiredKeyFile)
      const fork = signSuccession({ org: 'Provider', from: retired, to: newIdentity(), graceMs: 0 })
      const mismatch = await send(fork)
      expect(mismatch.reply).toMatchObject({ ok: false, error: 'SuccessionKeyMismatchError' })
      const refused = (await auditEntries(b)).filter((entry) => entry.type === 'peer.key_succession_refused')
      expect(refused.map((entry) => entry.data.error)).toEqual([
        'SuccessionSignatureError',
        'SuccessionUnknownPeerError',
        'SuccessionKeyMismatchError',
      ])
      const peersAfter = await api<PeerJson[]>(b, 'GET', '/v1/peers')
      expect(peersAfter.map((peer) => [peer.alias, peer.peerId])).toEqual(
        peersBefore.map((peer) => [peer.alias, peer.peerId]),
      )
    } finally {
      await rogue.stop()
    }

    expect(await a.stop()).toBe(0)
    expect(await b.stop()).toBe(0)
    await auditVerify(a)
    await auditVerify(b)
  }, 90_000)
})

/**
 * A hostile peer for adversarial tests: a real libp2p node with its own valid key (which the
 * victim may have added as a peer) that speaks `/oe/agreement/1.0.0` (or any other protocol a
 * test names) with whatever bytes a test gives it.
 */
import { generateKeyPairSync } from 'node:crypto'
import { noise } from '@chainsafe/libp2p-noise'
import { asCrypto, defaultCrypto } from '@chainsafe/libp2p-noise/crypto'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import type { Libp2p } from '@libp2p/interface'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { AGREEMENT_PROTOCOL, decodeFramePayload, FrameDecoder } from '../../federation/index.ts'
import { createCard, identityFromKeyObject, type NodeIdentity } from '../../node/index.ts'
import { api, peer } from './federation.ts'
import { type RunningNode, startNode } from './node-process.ts'

export interface Rogue {
  identity: NodeIdentity
  node: Libp2p
  card: string
  /**
   * Open a stream of `protocol` (default `/oe/agreement/1.0.0`) to `target`, write `bytes`,
   * close our side, and read the reply.
   */
  exchange(
    target: string,
    bytes: Uint8Array,
    protocol?: string,
  ): Promise<{ reply?: unknown; reset: boolean; error?: string }>
  stop(): Promise<void>
}

export function newIdentity(): NodeIdentity {
  return identityFromKeyObject(generateKeyPairSync('ed25519').privateKey)
}

export async function startRogue(org = 'Rogue', identity = newIdentity()): Promise<Rogue> {
  const node = await createLibp2p({
    privateKey: await generateKeyPairFromSeed('Ed25519', identity.privateKeySeed),
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise({ crypto: { ...defaultCrypto, ...asCrypto } })],
    streamMuxers: [yamux()],
    services: { identify: identify(), ping: ping() },
    connectionGater: { denyDialMultiaddr: () => false },
  })
  const card = createCard(
    identity,
    org,
    node.getMultiaddrs().map((addr) => addr.toString()),
  ).text
  return {
    identity,
    node,
    card,
    async exchange(target, bytes, protocol = AGREEMENT_PROTOCOL) {
      let stream: Awaited<ReturnType<Libp2p['dialProtocol']>>
      try {
        stream = await node.dialProtocol(multiaddr(target), protocol, {
          signal: AbortSignal.timeout(10_000),
        })
      } catch (error) {
        return { reset: true, error: `dial refused: ${(error as Error).message}` }
      }
      try {
        if (!stream.send(bytes)) await stream.onDrain()
        await stream.close()
        const decoder = new FrameDecoder()
        for await (const chunk of stream) decoder.push(chunk instanceof Uint8Array ? chunk : chunk.subarray())
        const payload = decoder.take()
        return payload === undefined
          ? { reset: stream.status !== 'closed' }
          : { reply: decodeFramePayload(payload), reset: false }
      } catch (error) {
        return { reset: true, error: (error as Error).message }
      }
    },
    stop: async () => {
      await node.stop()
    },
  }
}

/** A node under attack, an honest peer of it, and a rogue peer it knows as `rogue`. */
export interface Arena {
  victim: RunningNode
  honest: RunningNode
  rogue: Rogue
  /** The victim's first listen address, with its peer id. */
  target: string
  /** The victim's public key (base64url), as its card gives it. */
  victimKey: string
}

/** Start the victim and an honest peer (peered both ways as `honest`/`victim`) and a rogue the victim has added. */
export async function startArena(): Promise<Arena> {
  const [victim, honest] = await Promise.all([
    startNode({ config: 'org = "Victim"\n' }),
    startNode({ config: 'org = "Honest"\n' }),
  ])
  await peer(victim, 'honest', honest, 'victim')
  const rogue = await startRogue()
  await api(victim, 'POST', '/v1/peers', { card: rogue.card, alias: 'rogue' })
  const status = await api<{ addrs: string[] }>(victim, 'GET', '/v1/status')
  const card = await api<{ card: { publicKey: string } }>(victim, 'GET', '/v1/card')
  return { victim, honest, rogue, target: status.addrs[0]!, victimKey: card.card.publicKey }
}

/**
 * The courier: a short-lived libp2p node keyed by a key this node retired, used only to carry a
 * succession statement (and the messages queued before it) to a peer that was offline when the
 * key was rotated. That peer still knows only the old key, and its gate admits nothing else; the
 * courier dials it as the old key, sends, and stops. It listens nowhere and dials only that peer.
 *
 * @example
 * await withCourier(retiredSeed, { peerId, addrs }, async (openStream) => {
 *   const stream = await openStream(AGREEMENT_PROTOCOL, { signal })
 * })
 */
import { type ICryptoInterface, noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import type { Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { noiseCrypto } from './noise-crypto.ts'

export type OpenStream = (protocol: string, options: { signal?: AbortSignal }) => Promise<Stream>

export interface CourierTarget {
  peerId: string
  addrs: readonly string[]
}

/**
 * Connect to `target` as the key of `seed`, run `work` with a way to open streams to it, and
 * stop the node whatever happens.
 */
export async function withCourier<T>(
  seed: Uint8Array,
  target: CourierTarget,
  work: (openStream: OpenStream) => Promise<T>,
  options: { signal?: AbortSignal; crypto?: ICryptoInterface } = {},
): Promise<T> {
  const node = await createLibp2p({
    privateKey: await generateKeyPairFromSeed('Ed25519', seed),
    addresses: { listen: [] },
    transports: [tcp()],
    connectionEncrypters: [noise({ crypto: options.crypto ?? noiseCrypto().crypto })],
    streamMuxers: [yamux()],
    // The peer pings and identifies whoever connects; a courier that did not answer would be hung up.
    services: { identify: identify(), ping: ping() },
    connectionGater: {
      denyDialMultiaddr: () => false,
      denyDialPeer: (peerId) => peerId.toString() !== target.peerId,
      denyInboundConnection: () => true,
    },
  })
  try {
    const peerId = peerIdFromString(target.peerId)
    const addrs = target.addrs.map((addr) =>
      multiaddr(addr.includes('/p2p/') ? addr : `${addr}/p2p/${target.peerId}`).decapsulateCode(421),
    )
    await node.peerStore.merge(peerId, { multiaddrs: addrs })
    await node.dial(peerId, { signal: AbortSignal.any([AbortSignal.timeout(5_000), ...signals(options)]) })
    return await work((protocol, streamOptions) => node.dialProtocol(peerId, protocol, streamOptions))
  } finally {
    try {
      await node.stop()
    } catch {
      // Stopping a node that never connected can fail; there is nothing left to release.
    }
  }
}

const signals = (options: { signal?: AbortSignal }): AbortSignal[] => (options.signal ? [options.signal] : [])

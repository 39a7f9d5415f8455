/**
 * The libp2p host: TCP, Noise (ChaCha20-Poly1305 from the system's OpenSSL, or WebAssembly: see
 * noise-crypto.ts), Yamux,
 * identify and ping, keyed by the node's identity. A gater admits only peers in the directory,
 * inbound and outbound, before any protocol runs. A supervisor keeps a connection to every
 * known peer (redialling with backoff), measures RTT, and notices dead links by failed pings.
 */
import { type ICryptoInterface, noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import type { Libp2p, MultiaddrConnection, PeerId, StreamHandler } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { type Ping, ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import type { Logger } from '../data-plane/index.ts'
import type { PeerRecord } from './stores.ts'

/** How long an inbound connection may take to finish its handshake (Noise, Yamux). */
const INBOUND_UPGRADE_TIMEOUT_MS = 5_000
/** Inbound handshakes one remote address may have in progress at once. */
const MAX_PENDING_PER_ADDRESS = 16

export interface FederationHostInit {
  listen: string[]
  /** How often connected peers are pinged. */
  pingIntervalMs?: number
  /** How long a dial or ping may take. */
  timeoutMs?: number
  /** Noise's ciphers (noise-crypto.ts). */
  crypto: ICryptoInterface
}

export interface FederationHostComponents {
  /** 32-byte ed25519 seed of the node key. */
  privateKeySeed: Uint8Array
  logger: Logger
  /** Peers we keep connections to; also the gate's allow-list. */
  peers: () => Iterable<PeerRecord>
  isAllowed: (peerId: string) => boolean
  onRefused: (event: { peerId: string; direction: 'inbound' | 'outbound'; remoteAddr: string }) => void
  onConnected: (peerId: string) => void
  onDisconnected: (peerId: string) => void
  /** The addresses an authenticated peer says it listens on (from identify). */
  onListenAddrs: (peerId: string, addrs: string[]) => void
}

export type PeerConnectionState = 'connected' | 'connecting' | 'disconnected'

export interface PeerLink {
  state: PeerConnectionState
  /** When the current connection came up. */
  connectedAt?: number
  rttMs?: number
  lastSeen?: number
  lastError?: string
  nextDial: number
  backoffMs: number
}

type Services = { identify: unknown; ping: Ping }

const MIN_BACKOFF_MS = 250
const MAX_BACKOFF_MS = 60_000
/**
 * A connection that lasted less than this does not count as a success: the far side's gate
 * refuses a key it does not know right after the handshake, which looks like a connection here.
 */
const STABLE_MS = 10_000

export class FederationHost {
  private node: Libp2p<Services> | undefined
  private readonly links = new Map<string, PeerLink>()
  private timer: ReturnType<typeof setInterval> | undefined
  private lastPing = 0
  private ticking = false

  constructor(
    private readonly init: FederationHostInit,
    private readonly components: FederationHostComponents,
  ) {}

  get libp2p(): Libp2p<Services> {
    if (!this.node) throw new Error('the libp2p host has not been started')
    return this.node
  }

  get peerId(): string {
    return this.libp2p.peerId.toString()
  }

  isStarted(): boolean {
    return this.node?.status === 'started'
  }

  async start(): Promise<void> {
    if (this.node) return
    const { components } = this
    const privateKey = await generateKeyPairFromSeed('Ed25519', components.privateKeySeed)
    const refuse = (peerId: PeerId, direction: 'inbound' | 'outbound', remoteAddr: string): boolean => {
      const id = peerId.toString()
      if (components.isAllowed(id)) return false
      components.onRefused({ peerId: id, direction, remoteAddr })
      return true
    }
    // Handshakes in progress per remote address: one address cannot take every pending slot.
    const pending = new Map<string, number>()
    const holdPending = (maConn: MultiaddrConnection): boolean => {
      const address = /^\/ip[46]\/([^/]+)/.exec(maConn.remoteAddr.toString())?.[1] ?? '?'
      const held = pending.get(address) ?? 0
      if (held >= MAX_PENDING_PER_ADDRESS) return true
      pending.set(address, held + 1)
      let released = false
      const release = () => {
        if (released) return
        released = true
        const left = (pending.get(address) ?? 1) - 1
        if (left <= 0) pending.delete(address)
        else pending.set(address, left)
      }
      // Upgraded or not, a connection stops being pending by the upgrade timeout.
      setTimeout(release, INBOUND_UPGRADE_TIMEOUT_MS).unref?.()
      maConn.addEventListener('close', release, { once: true })
      return false
    }
    this.node = await createLibp2p({
      privateKey,
      addresses: { listen: this.init.listen },
      transports: [tcp()],
      connectionEncrypters: [noise({ crypto: this.init.crypto })],
      streamMuxers: [yamux()],
      services: { identify: identify(), ping: ping() },
      connectionGater: {
        // Loopback and private addresses are where test hosts and many partners live.
        denyDialMultiaddr: () => false,
        denyDialPeer: (peerId) => !components.isAllowed(peerId.toString()),
        denyInboundConnection: (maConn) => holdPending(maConn),
        denyInboundEncryptedConnection: (peerId, conn) =>
          refuse(peerId, 'inbound', conn.remoteAddr.toString()),
        denyOutboundEncryptedConnection: (peerId, conn) =>
          refuse(peerId, 'outbound', conn.remoteAddr.toString()),
      },
      // Many nodes may share a host (a demo, a lab); only gated peers get past the handshake.
      // Half-open sockets time out after 5 s, and up to 128 may be in their handshake at once
      // (libp2p's default of 10 let ten idle sockets hold off every inbound peer for 10 s).
      connectionManager: {
        maxConnections: 256,
        inboundConnectionThreshold: 50,
        maxIncomingPendingConnections: 128,
        inboundUpgradeTimeout: INBOUND_UPGRADE_TIMEOUT_MS,
      },
    })
    this.node.addEventListener('peer:connect', (event) => {
      const id = event.detail.toString()
      const link = this.link(id)
      link.state = 'connected'
      link.connectedAt = Date.now()
      link.lastSeen = link.connectedAt
      link.lastError = undefined
      components.onConnected(id)
    })
    this.node.addEventListener('peer:identify', (event) => {
      const { peerId, listenAddrs } = event.detail
      const addrs = listenAddrs.map((addr) => addr.toString()).filter((addr) => addr.includes('/tcp/'))
      if (addrs.length > 0) components.onListenAddrs(peerId.toString(), addrs)
    })
    this.node.addEventListener('peer:disconnect', (event) => {
      const id = event.detail.toString()
      const link = this.link(id)
      const now = Date.now()
      link.state = 'disconnected'
      if (link.connectedAt !== undefined && now - link.connectedAt >= STABLE_MS) {
        // A connection that served a while dropped: redial at once.
        link.backoffMs = MIN_BACKOFF_MS
        link.nextDial = now
      } else {
        // Refused (or dropped) right away: back off, exponentially, up to MAX_BACKOFF_MS.
        link.lastError ??= 'the connection closed right after it opened (refused by the peer?)'
        link.nextDial = now + link.backoffMs
        link.backoffMs = Math.min(link.backoffMs * 2, MAX_BACKOFF_MS)
      }
      link.connectedAt = undefined
      components.onDisconnected(id)
    })
    this.timer = setInterval(() => void this.tick(), 250)
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    this.timer = undefined
    const node = this.node
    this.node = undefined
    await node?.stop()
  }

  handle(protocol: string, handler: StreamHandler, maxInboundStreams = 32): Promise<void> {
    return this.libp2p.handle(protocol, handler, { maxInboundStreams, maxOutboundStreams: 64 })
  }

  /** Listening addresses, each with /p2p/<our peer id>. */
  addresses(): string[] {
    return this.libp2p.getMultiaddrs().map((addr) => addr.toString())
  }

  link(peerId: string): PeerLink {
    let link = this.links.get(peerId)
    if (!link) {
      link = { state: 'disconnected', nextDial: 0, backoffMs: MIN_BACKOFF_MS }
      this.links.set(peerId, link)
    }
    return link
  }

  isConnected(peerId: string): boolean {
    return this.node !== undefined && this.node.getConnections(peerIdFromString(peerId)).length > 0
  }

  /** Drop a peer at once (after it was removed from the directory). */
  async disconnect(peerId: string): Promise<void> {
    this.links.delete(peerId)
    if (!this.node) return
    const id = peerIdFromString(peerId)
    await this.node.hangUp(id).catch(() => {})
    await this.node.peerStore.delete(id).catch(() => {})
  }

  /** Dial soon (e.g. a peer was just added). */
  wake(peerId: string): void {
    const link = this.link(peerId)
    link.nextDial = 0
    link.backoffMs = MIN_BACKOFF_MS
    void this.tick()
  }

  async openStream(peerId: string, protocol: string, options: { signal?: AbortSignal } = {}) {
    return this.libp2p.dialProtocol(peerIdFromString(peerId), protocol, options)
  }

  private async tick(): Promise<void> {
    if (this.ticking || !this.node) return
    this.ticking = true
    try {
      const now = Date.now()
      const dials: Promise<void>[] = []
      for (const peer of this.components.peers()) {
        const link = this.link(peer.peerId)
        if (this.isConnected(peer.peerId)) {
          if (link.state !== 'connected') link.state = 'connected'
          continue
        }
        if (link.state === 'connected') link.state = 'disconnected'
        if (link.state === 'connecting' || link.nextDial > now) continue
        dials.push(this.dial(peer, link))
      }
      const pingDue = now - this.lastPing >= (this.init.pingIntervalMs ?? 2_000)
      if (pingDue) this.lastPing = now
      await Promise.all([...dials, pingDue ? this.pingAll() : undefined])
    } finally {
      this.ticking = false
    }
  }

  private async dial(peer: PeerRecord, link: PeerLink): Promise<void> {
    link.state = 'connecting'
    const node = this.libp2p
    const peerId = peerIdFromString(peer.peerId)
    try {
      const addrs = peer.addrs.map((addr) =>
        multiaddr(addr.includes('/p2p/') ? addr : `${addr}/p2p/${peer.peerId}`),
      )
      await node.peerStore.merge(peerId, { multiaddrs: addrs.map((addr) => addr.decapsulateCode(421)) })
      await node.dial(peerId, { signal: AbortSignal.timeout(this.init.timeoutMs ?? 5_000) })
      // Not yet a success: the far side may refuse right after the handshake (see STABLE_MS).
      // The backoff resets when a ping is answered or the connection lasts.
      if (this.isConnected(peer.peerId)) link.state = 'connected'
    } catch (error) {
      if (this.isConnected(peer.peerId)) {
        link.state = 'connected'
        return
      }
      link.state = 'disconnected'
      link.lastError = (error as Error).message
      link.nextDial = Date.now() + link.backoffMs
      link.backoffMs = Math.min(link.backoffMs * 2, MAX_BACKOFF_MS)
      this.components.logger.debug(
        { peer: peer.alias, err: link.lastError, retryMs: link.backoffMs },
        'dial failed',
      )
    }
  }

  /** Ping every connected peer; a peer that does not answer is hung up so it shows as down. */
  private async pingAll(): Promise<void> {
    const node = this.node
    if (!node) return
    await Promise.all(
      [...this.components.peers()].map(async (peer) => {
        if (!this.isConnected(peer.peerId)) return
        const link = this.link(peer.peerId)
        try {
          link.rttMs = await node.services.ping.ping(peerIdFromString(peer.peerId), {
            signal: AbortSignal.timeout(this.init.timeoutMs ?? 3_000),
          })
          link.lastSeen = Date.now()
          // The peer answers on the connection: it accepted us.
          link.backoffMs = MIN_BACKOFF_MS
          link.connectedAt = Math.min(link.connectedAt ?? 0, Date.now() - STABLE_MS)
        } catch (error) {
          link.lastError = `ping failed: ${(error as Error).message}`
          link.state = 'disconnected'
          link.nextDial = Date.now() + link.backoffMs
          await node.hangUp(peerIdFromString(peer.peerId)).catch(() => {})
        }
      }),
    )
  }
}

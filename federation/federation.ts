/**
 * The federation service: the peer directory and its connections, and the lifecycle of sharing
 * agreements between this node and its peers. Local actions (propose, accept, reject, revoke)
 * take effect here at once and are delivered to the peer through a durable outbox, retried
 * until the peer acknowledges them. Messages from peers are checked against the agreement and
 * the authenticated sender before anything changes; repeats are harmless.
 *
 * Key rotation: a peer's succession statement (signed by its old and its new key) moves the peer
 * to its new key under the same alias; the old key stays accepted (gate, messages) until the
 * statement's grace ends. Agreements keep the keys they were signed with: whatever a party signs
 * later (batches, control commands, acceptances, revocations) is checked against the party's key
 * in force, found by following that chain. This node's own statements go through the outbox; a
 * peer that was offline gets them from a courier keyed by the retired key (`courier.ts`).
 */
import type { KeyObject } from 'node:crypto'
import type { Connection, Stream } from '@libp2p/interface'
import type { DataPlane, LeaseManager, Logger } from '../data-plane/index.ts'
import {
  type AgreementDocument,
  type AgreementState,
  agreementId,
  agreementState,
  base64url,
  exportAgreement,
  type Grant,
  importAgreement,
  newAgreementBody,
  otherRole,
  type Role,
  roleOf,
  type Signer,
  signId,
  signTermination,
  type Termination,
  verifyIdSignature,
} from './agreement.ts'
import { CONTROL_PROTOCOL } from './control.ts'
import { ControlRelay } from './control-relay.ts'
import { type OpenStream, withCourier } from './courier.ts'
import {
  AgreementExpiredError,
  AgreementFormatError,
  AgreementNotFoundError,
  AgreementStateError,
  BadSignatureError,
  FederationError,
  ForeignAgreementError,
  FrameError,
  KeySuccessionError,
  PeerExistsError,
  PeerRefusedError,
  SuccessionKeyMismatchError,
  SuccessionUnknownPeerError,
  UnknownPeerError,
} from './errors.ts'
import { type AuditSink, TransferFlows } from './flows.ts'
import { readFrame, writeFrame } from './frames.ts'
import { FederationHost, type PeerConnectionState } from './host.ts'
import { AGREEMENT_PROTOCOL, type AgreementMessage, parseAgreementMessage, parseReply } from './messages.ts'
import { type NoiseCrypto, noiseCrypto } from './noise-crypto.ts'
import { RefusalAggregator } from './refusals.ts'
import { refuseStream } from './refuse.ts'
import { SiteIndex } from './site-index.ts'
import {
  AGREEMENTS_BUCKET,
  type AgreementRecord,
  type BucketChange,
  IDENTITY_BUCKET,
  OUTBOX_BUCKET,
  type OutboxEntry,
  PEERS_BUCKET,
  type PeerRecord,
  RecordBucket,
  type RetiredPeerKey,
  SUCCESSIONS_KEY,
} from './stores.ts'
import { type KeySuccession, peerIdOfKey } from './succession.ts'
import { DEFAULT_TUNING, type FlowStats, TRANSFER_PROTOCOL, type TransferTuning } from './transfer.ts'

export const ALIAS_PATTERN = /^[a-z][a-z0-9-]{0,31}$/

export type { AuditSink }

export interface FederationSigner extends Signer {
  /** 32-byte ed25519 seed, for the libp2p key. */
  privateKeySeed: Uint8Array
  /** The runtime's key object: batches are signed with node:crypto on the hot path. */
  privateKeyObject: KeyObject
}

export interface FederationInit {
  org: string
  listen: string[]
  /** How long a message exchange with a peer may take. */
  messageTimeoutMs?: number
  transfer?: Partial<TransferTuning>
  /** Noise's ciphers (noise-crypto.ts); the system's OpenSSL when it passes its checks. */
  noiseCrypto?: NoiseCrypto
}

export interface FederationComponents {
  dataPlane: DataPlane
  signer: FederationSigner
  logger: Logger
  audit: AuditSink
  /** Leases shared by the replicas of this node: each agreement's transfer runs on one. */
  leases: LeaseManager
  /**
   * A key this node retired (by its public key, base64url), to carry a succession statement to
   * a peer that was offline when the key was rotated. Undefined when it is no longer kept.
   */
  retiredSigner?: (publicKey: string) => Promise<FederationSigner | undefined>
  /** Flow counters to carry on from (those of the federation this one replaces after a key rotation). */
  flows?: ReadonlyMap<string, FlowStats>
}

/** A peer as the API and CLI show it. */
export interface PeerView {
  alias: string
  org: string
  peerId: string
  addrs: string[]
  state: PeerConnectionState
  rttMs: number | null
  lastSeen: string | null
  lastError: string | null
  added: string
  /** Keys the peer replaced (key rotation): accepted until `acceptedUntil`, refused after. */
  retired?: { peerId: string; acceptedUntil: string }[]
  /** True while the peer has not acknowledged this node's latest key succession statement. */
  keySuccessionPending?: boolean
}

/** An agreement as `agreement list --json` shows it. */
export interface AgreementSummary {
  id: string
  state: AgreementState
  role: Role
  peer: string
  /** True while the other party's proposal waits for our signature. */
  awaitingUs: boolean
  purpose: string
  provider: string
  consumer: string
  validFrom: string
  validUntil: string
  grants: Grant[]
}

export interface AgreementDetail extends AgreementSummary {
  body: AgreementDocument['body']
  signatures: AgreementDocument['signatures']
  proposedBy: Role
  rejection: Termination | null
  revocation: Termination | null
  outbox: { pending: number; lastError: string | null }
  /** Data flow under this agreement, as seen by this node. */
  flow: FlowStats & { session: boolean; rttMs: number | null }
}

export interface ProposeInput {
  peer: string
  grants: Grant[]
  purpose: string
  validUntil: number
  validFrom?: number
  /** We offer our data (we are the provider); otherwise we ask for the peer's. */
  offer?: boolean
  limits?: { maxRecordsPerSec?: number }
}

const iso = (ms: number): string => new Date(ms).toISOString()

/** How soon a courier tries again after it could not reach its peer, at first and at most. */
const COURIER_RETRY_MS = 1_000
const COURIER_MAX_RETRY_MS = 15_000

export class Federation {
  private host: FederationHost | undefined
  private peersBucket: RecordBucket<PeerRecord> | undefined
  private agreementsBucket: RecordBucket<AgreementRecord> | undefined
  private outboxBucket: RecordBucket<OutboxEntry> | undefined
  private readonly peersByAlias = new Map<string, PeerRecord>()
  private readonly agreements = new Map<string, AgreementRecord>()
  private readonly outbox = new Map<string, OutboxEntry>()
  private readonly locks = new Map<string, Promise<unknown>>()
  private readonly delivering = new Set<string>()
  private readonly deliverAgain = new Set<string>()
  private readonly outboxErrors = new Map<string, string>()
  private timer: ReturnType<typeof setInterval> | undefined
  private outboxSequence = 0
  private readonly myKey: string
  private readonly noise: NoiseCrypto
  private readonly siteIndex = new SiteIndex()
  private readonly refusals = new RefusalAggregator()
  private readonly transfers: TransferFlows
  private offReconnect: (() => void) | undefined
  private readonly control: ControlRelay
  private identityBucket: RecordBucket<KeySuccession[]> | undefined
  /** This node's own key successions, oldest first (shared by its replicas). */
  private ownSuccessions: KeySuccession[] = []
  /** Per peer alias, when its courier may run next, and its current backoff. */
  private readonly couriers = new Map<string, { next: number; backoffMs: number; running: boolean }>()
  /** Retired keys whose connections are being closed now. */
  private readonly closing = new Set<string>()
  private retiredWarned = false

  constructor(
    private readonly init: FederationInit,
    private readonly components: FederationComponents,
  ) {
    this.myKey = base64url(components.signer.publicKey)
    this.noise = init.noiseCrypto ?? noiseCrypto()
    this.transfers = new TransferFlows(
      { ...DEFAULT_TUNING, ...init.transfer },
      {
        dataPlane: components.dataPlane,
        logger: components.logger,
        audit: components.audit,
        privateKey: components.signer.privateKeyObject,
        siteOf: this.siteIndex.siteOf,
        agreement: (id) => this.agreements.get(id),
        state: (record) => this.state(record),
        peer: (alias) => this.peersByAlias.get(alias),
        peerByPeerId: (peerId) => this.peerByPeerId(peerId),
        host: () => this.host,
        leases: components.leases,
      },
      components.flows,
    )
    this.control = new ControlRelay(init.messageTimeoutMs ?? 10_000, {
      dataPlane: components.dataPlane,
      logger: components.logger,
      audit: components.audit,
      signer: components.signer,
      agreements: () => this.agreements.values(),
      agreement: (id) => this.agreements.get(id),
      peer: (alias) => this.peersByAlias.get(alias),
      peerByPeerId: (peerId) => this.peerByPeerId(peerId),
      host: () => this.host,
      siteOf: this.siteIndex.siteOf,
      providerSiteOf: (id, kind, rid) => this.transfers.providerSiteOf(id, kind, rid),
    })
  }

  get started(): boolean {
    return this.host?.isStarted() ?? false
  }

  get peerId(): string {
    return this.host?.peerId ?? ''
  }

  addresses(): string[] {
    return this.host?.addresses() ?? []
  }

  /** What seals Noise frames: `openssl (libcrypto.so.3)` or `wasm`. */
  get noiseCrypto(): string {
    return this.noise.impl
  }

  async start(): Promise<void> {
    if (this.host) return
    const js = this.components.dataPlane.jetstream
    const replicas = { replicas: this.components.dataPlane.replicas }
    this.peersBucket = await RecordBucket.open<PeerRecord>(js, PEERS_BUCKET, replicas)
    this.agreementsBucket = await RecordBucket.open<AgreementRecord>(js, AGREEMENTS_BUCKET, replicas)
    this.outboxBucket = await RecordBucket.open<OutboxEntry>(js, OUTBOX_BUCKET, replicas)
    this.identityBucket = await RecordBucket.open<KeySuccession[]>(js, IDENTITY_BUCKET, replicas)
    await this.transfers.start()
    await this.siteIndex.start(js)
    // Other replicas of this node change the same buckets: follow them (watches first, so no
    // change falls between the reads below and the watch).
    await this.peersBucket.watch((change) => this.onPeerChange(change))
    await this.agreementsBucket.watch((change) => this.onAgreementChange(change))
    await this.outboxBucket.watch((change) => this.onOutboxChange(change))
    await this.identityBucket.watch((change) => this.onOwnSuccessions(change.value ?? []))
    this.ownSuccessions = (await this.identityBucket.get(SUCCESSIONS_KEY)) ?? []
    for (const peer of await this.peersBucket.list()) this.peersByAlias.set(peer.alias, peer)
    for (const record of await this.agreementsBucket.list()) this.agreements.set(record.id, record)
    for (const entry of await this.outboxBucket.list()) this.outbox.set(entry.key, entry)
    this.outboxSequence = this.outbox.size

    const host = new FederationHost(
      { listen: this.init.listen, crypto: this.noise.crypto },
      {
        privateKeySeed: this.components.signer.privateKeySeed,
        logger: this.components.logger,
        peers: () => this.peersByAlias.values(),
        isAllowed: (peerId) => this.peerByPeerId(peerId) !== undefined,
        onRefused: (event) => {
          // The first refusal of a key is audited at once; repeats within the interval as one
          // entry with a count (housekeeping), so a stranger cannot grow the log.
          if (!this.refusals.note(event)) return
          const reason = this.refusalReason(event.peerId)
          this.components.logger.warn(event, `connection refused: ${reason}`)
          void this.components.audit.append('connection.refused', { ...event, reason, count: 1 })
        },
        onConnected: (peerId) => {
          const peer = this.peerByPeerId(peerId)
          if (!peer) return
          this.components.logger.info({ peer: peer.alias }, 'peer connected')
          void this.components.audit.append('connection.accepted', { peer: peer.alias, peerId })
          void this.deliver(peer.alias)
        },
        onListenAddrs: (peerId, addrs) => void this.learnAddrs(peerId, addrs),
        onDisconnected: (peerId) => {
          const peer = this.peerByPeerId(peerId)
          if (peer) this.components.logger.info({ peer: peer.alias }, 'peer disconnected')
        },
      },
    )
    this.host = host
    await host.start()
    await host.handle(AGREEMENT_PROTOCOL, (stream, connection) => this.onStream(stream, connection))
    await host.handle(
      TRANSFER_PROTOCOL,
      (stream, connection) => this.transfers.onTransferStream(stream, connection),
      64,
    )
    await host.handle(CONTROL_PROTOCOL, (stream, connection) =>
      this.control.onControlStream(stream, connection),
    )
    await this.control.start()
    this.timer = setInterval(() => this.housekeeping(), 500)
    this.housekeeping()
    // JetStream acks sent while NATS was away are lost, and a consumer whose deliveries wait on
    // them would stall until the provider's stall check; new sessions start from what the
    // consumers hold at once.
    this.offReconnect = this.components.dataPlane.onReconnect(() => {
      this.transfers.restartProviderSessions('NATS reconnected')
      this.housekeeping()
    })
    this.components.logger.info(
      { addrs: host.addresses(), peers: this.peersByAlias.size },
      'federation started',
    )
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    this.timer = undefined
    for (const bucket of [this.peersBucket, this.agreementsBucket, this.outboxBucket]) bucket?.stopWatching()
    this.offReconnect?.()
    this.transfers.stop('node stopping')
    this.siteIndex.stop()
    await this.control.stop()
    const host = this.host
    this.host = undefined
    await host?.stop()
    // Sessions end with the connections; their reads and leases are let go before this returns.
    await this.transfers.settled(5_000)
  }

  // ── changes made by other replicas ─────────────────────────────────────────────────────────

  private onPeerChange(change: BucketChange<PeerRecord>): void {
    const known = this.peersByAlias.get(change.key)
    if (change.value) {
      this.peersByAlias.set(change.key, change.value)
      // A new peer, or one that moved to its successor key (on another replica).
      if (known?.peerId !== change.value.peerId) this.host?.wake(change.value.peerId)
    } else if (known) {
      this.peersByAlias.delete(change.key)
      void this.host?.disconnect(known.peerId)
    }
  }

  private onAgreementChange(change: BucketChange<AgreementRecord>): void {
    if (!change.value) {
      this.agreements.delete(change.key)
      this.transfers.endAgreement(change.key, 'agreement removed')
      return
    }
    this.agreements.set(change.key, change.value)
    // A revocation made on another replica stops this one's sessions at once.
    const state = this.state(change.value)
    if (state !== 'active') this.transfers.endAgreement(change.key, state)
  }

  private onOutboxChange(change: BucketChange<OutboxEntry>): void {
    if (!change.value) {
      this.outbox.delete(change.key)
      return
    }
    this.outbox.set(change.key, change.value)
    void this.deliver(change.value.peer)
  }

  // ── peers ────────────────────────────────────────────────────────────────────────────────

  /** The peer a key speaks for: its current key, or a key it replaced whose grace has not ended. */
  private peerByPeerId(peerId: string, now = Date.now()): PeerRecord | undefined {
    for (const peer of this.peersByAlias.values()) if (peer.peerId === peerId) return peer
    for (const peer of this.peersByAlias.values()) {
      if (peer.retired?.some((key) => key.peerId === peerId && key.until > now)) return peer
    }
    return undefined
  }

  /** The keys a peer may sign with now: its current key and those still in their grace. */
  private keysInForce(peer: PeerRecord, now = Date.now()): string[] {
    return [
      peer.publicKey,
      ...(peer.retired ?? []).filter((key) => key.until > now).map((key) => key.publicKey),
    ]
  }

  /** Why the gate refuses a key: a peer's retired key, or a stranger's. */
  private refusalReason(peerId: string): string {
    for (const peer of this.peersByAlias.values()) {
      if (peer.retired?.some((key) => key.peerId === peerId))
        return `retired key of ${peer.alias} (its grace ended)`
    }
    return 'unknown peer'
  }

  private peerByKey(key: string): PeerRecord | undefined {
    for (const peer of this.peersByAlias.values()) if (peer.publicKey === key) return peer
    return undefined
  }

  private requirePeer(alias: string): PeerRecord {
    const peer = this.peersByAlias.get(alias)
    if (!peer) throw new UnknownPeerError(`no peer named '${alias}' (see oe-node peers list)`)
    return peer
  }

  async addPeer(input: Omit<PeerRecord, 'added'>): Promise<PeerView> {
    if (!ALIAS_PATTERN.test(input.alias)) {
      throw new AgreementFormatError('alias', `'${input.alias}' is not an alias (${ALIAS_PATTERN.source})`)
    }
    if (input.publicKey === this.myKey) throw new PeerExistsError('that card is this node’s own')
    if (this.peersByAlias.has(input.alias))
      throw new PeerExistsError(`a peer named '${input.alias}' exists already`)
    const same = this.peerByKey(input.publicKey)
    if (same) throw new PeerExistsError(`that node is already a peer, as '${same.alias}'`)
    const record: PeerRecord = { ...input, added: Date.now() }
    await this.peersBucket!.put(record.alias, record)
    this.peersByAlias.set(record.alias, record)
    await this.components.audit.append('peer.added', {
      peer: record.alias,
      org: record.org,
      peerId: record.peerId,
    })
    this.host?.wake(record.peerId)
    return this.peerView(record)
  }

  async removePeer(alias: string): Promise<void> {
    const peer = this.requirePeer(alias)
    this.peersByAlias.delete(alias)
    await this.peersBucket!.delete(alias)
    await this.host?.disconnect(peer.peerId)
    await this.components.audit.append('peer.removed', { peer: alias, peerId: peer.peerId })
  }

  /**
   * Keep the addresses a peer announces once authenticated, so a peer that moved (a new port or
   * host) is still found after either side restarts. The card's addresses remain the start.
   */
  private async learnAddrs(peerId: string, addrs: string[]): Promise<void> {
    const peer = this.peerByPeerId(peerId)
    // A retired key's connection (an old process, a courier) does not say where the peer is now.
    if (!peer || peer.peerId !== peerId) return
    const announced = addrs.map((addr) => (addr.includes('/p2p/') ? addr : `${addr}/p2p/${peerId}`))
    if (announced.every((addr) => peer.addrs.includes(addr))) return
    // Newest first, the card's and earlier ones after, bounded.
    const merged = [...new Set([...announced, ...peer.addrs])].slice(0, 16)
    const updated: PeerRecord = { ...peer, addrs: merged }
    this.peersByAlias.set(peer.alias, updated)
    await this.peersBucket!.put(peer.alias, updated)
    this.components.logger.debug({ peer: peer.alias, addrs: merged }, 'peer addresses updated')
  }

  peers(): PeerView[] {
    return [...this.peersByAlias.values()]
      .sort((a, b) => a.alias.localeCompare(b.alias))
      .map((peer) => this.peerView(peer))
  }

  private peerView(peer: PeerRecord): PeerView {
    const link = this.host?.link(peer.peerId)
    const connected = this.host?.isConnected(peer.peerId) ?? false
    return {
      alias: peer.alias,
      org: peer.org,
      peerId: peer.peerId,
      addrs: peer.addrs,
      state: connected ? 'connected' : link?.state === 'connecting' ? 'connecting' : 'disconnected',
      rttMs: connected ? (link?.rttMs ?? null) : null,
      lastSeen: link?.lastSeen ? iso(link.lastSeen) : null,
      lastError: connected ? null : (link?.lastError ?? null),
      added: iso(peer.added),
      ...(peer.retired?.length
        ? { retired: peer.retired.map((key) => ({ peerId: key.peerId, acceptedUntil: iso(key.until) })) }
        : {}),
      ...([...this.outbox.values()].some(
        (entry) => entry.peer === peer.alias && entry.message.t === 'succession',
      )
        ? { keySuccessionPending: true }
        : {}),
    }
  }

  // ── agreements: local actions ──────────────────────────────────────────────────────────────

  /** Serialise changes to one agreement. */
  private async withLock<T>(id: string, action: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(id) ?? Promise.resolve()
    const run = previous.catch(() => {}).then(action)
    this.locks.set(id, run)
    try {
      return await run
    } finally {
      if (this.locks.get(id) === run) this.locks.delete(id)
    }
  }

  private requireAgreement(id: string): AgreementRecord {
    const record = this.agreements.get(id)
    if (!record) throw new AgreementNotFoundError(id)
    return record
  }

  private state(record: AgreementRecord, now = Date.now()): AgreementState {
    return agreementState(record.doc, record, now)
  }

  private async save(record: AgreementRecord): Promise<void> {
    record.updated = Date.now()
    await this.agreementsBucket!.put(record.id, record)
    this.agreements.set(record.id, record)
  }

  async propose(input: ProposeInput): Promise<{ id: string; state: AgreementState }> {
    const peer = this.requirePeer(input.peer)
    const me = { org: this.init.org, key: this.myKey }
    const them = { org: peer.org, key: peer.publicKey }
    const now = Date.now()
    const validFrom = input.validFrom ?? now
    if (input.validUntil <= now) throw new AgreementExpiredError('--valid-until is in the past')
    const body = newAgreementBody({
      provider: input.offer ? me : them,
      consumer: input.offer ? them : me,
      purpose: input.purpose,
      validFrom,
      validUntil: input.validUntil,
      grants: input.grants,
      ...(input.limits ? { limits: input.limits } : {}),
      now,
    })
    const id = agreementId(body)
    const role: Role = input.offer ? 'provider' : 'consumer'
    const record: AgreementRecord = {
      id,
      doc: { body, signatures: { [role]: signId(id, this.components.signer) } },
      role,
      peer: peer.alias,
      proposedBy: role,
      stored: now,
      updated: now,
    }
    await this.withLock(id, async () => {
      await this.save(record)
      await this.components.audit.append('agreement.proposed', {
        id,
        peer: peer.alias,
        role,
        grants: body.grants.length,
      })
      await this.enqueue(peer.alias, { t: 'propose', doc: record.doc })
    })
    return { id, state: this.state(record) }
  }

  async accept(id: string): Promise<{ id: string; state: AgreementState }> {
    return this.withLock(id, async () => {
      const record = this.requireAgreement(id)
      const state = this.state(record)
      if (state === 'active' || state === 'accepted') return { id, state }
      if (state === 'expired')
        throw new AgreementExpiredError(
          `agreement ${id} expired on ${iso(record.doc.body.validUntil)}; it can no longer be accepted`,
        )
      if (state !== 'proposed')
        throw new AgreementStateError(
          `agreement ${id} is ${state}; only a proposed agreement can be accepted`,
        )
      if (record.proposedBy === record.role) {
        throw new AgreementStateError(
          `agreement ${id} is this node's own proposal; the other party accepts it`,
        )
      }
      if (record.doc.body[record.role].key !== this.myKey) {
        // Our signature must verify against the key the body names, which this node retired.
        throw new AgreementStateError(
          `agreement ${id} names the key this node had before its key rotation; ask ${record.peer} to propose it again`,
        )
      }
      const sig = signId(id, this.components.signer)
      record.doc.signatures[record.role] = sig
      await this.save(record)
      await this.components.audit.append('agreement.accepted', { id, peer: record.peer, role: record.role })
      await this.enqueue(record.peer, { t: 'accept', id, sig })
      return { id, state: this.state(record) }
    })
  }

  async reject(id: string, reason = ''): Promise<{ id: string; state: AgreementState }> {
    return this.withLock(id, async () => {
      const record = this.requireAgreement(id)
      const state = this.state(record)
      if (state === 'rejected') return { id, state }
      if (state !== 'proposed')
        throw new AgreementStateError(
          `agreement ${id} is ${state}; only a proposal can be rejected${state === 'active' ? ' (use revoke)' : ''}`,
        )
      record.rejection = signTermination('reject', id, reason, this.components.signer)
      await this.save(record)
      await this.components.audit.append('agreement.rejected', { id, peer: record.peer, by: 'us', reason })
      await this.enqueue(record.peer, { t: 'reject', rejection: record.rejection })
      return { id, state: this.state(record) }
    })
  }

  async revoke(id: string, reason = ''): Promise<{ id: string; state: AgreementState }> {
    return this.withLock(id, async () => {
      const record = this.requireAgreement(id)
      const state = this.state(record)
      if (state === 'revoked') return { id, state }
      if (state === 'proposed')
        throw new AgreementStateError(`agreement ${id} is only proposed; reject it instead`)
      if (state === 'rejected') throw new AgreementStateError(`agreement ${id} was rejected`)
      record.revocation = signTermination('revoke', id, reason, this.components.signer)
      this.transfers.endAgreement(id, 'revoked')
      await this.save(record)
      await this.components.audit.append('agreement.revoked', { id, peer: record.peer, by: 'us', reason })
      await this.enqueue(record.peer, { t: 'revoke', revocation: record.revocation })
      return { id, state: this.state(record) }
    })
  }

  agreement(id: string): AgreementDetail {
    const record = this.requireAgreement(id)
    const pending = [...this.outbox.values()].filter((entry) => entry.peer === record.peer)
    return {
      ...this.summary(record),
      body: record.doc.body,
      signatures: record.doc.signatures,
      proposedBy: record.proposedBy,
      rejection: record.rejection ?? null,
      revocation: record.revocation ?? null,
      outbox: { pending: pending.length, lastError: this.outboxErrors.get(record.peer) ?? null },
      flow: {
        ...this.flow(id),
        session: this.transfers.hasSession(id),
        rttMs: this.peersByAlias.has(record.peer)
          ? this.peerView(this.peersByAlias.get(record.peer)!).rttMs
          : null,
      },
    }
  }

  list(): AgreementSummary[] {
    return [...this.agreements.values()]
      .sort((a, b) => a.stored - b.stored)
      .map((record) => this.summary(record))
  }

  /** Agreements by state, for status. */
  counts(): Record<string, number> {
    const counts: Record<string, number> = {}
    for (const record of this.agreements.values()) {
      const state = this.state(record)
      counts[state] = (counts[state] ?? 0) + 1
    }
    return counts
  }

  private summary(record: AgreementRecord): AgreementSummary {
    const { body } = record.doc
    const state = this.state(record)
    return {
      id: record.id,
      state,
      role: record.role,
      peer: record.peer,
      awaitingUs: state === 'proposed' && !record.doc.signatures[record.role],
      purpose: body.purpose,
      provider: body.provider.org,
      consumer: body.consumer.org,
      validFrom: iso(body.validFrom),
      validUntil: iso(body.validUntil),
      grants: body.grants,
    }
  }

  exportText(id: string): string {
    const record = this.requireAgreement(id)
    return exportAgreement(id, record.doc, this.state(record))
  }

  /** Take an agreement from its text form, checked as strictly as one from the wire. */
  async importText(textForm: string): Promise<{ id: string; state: AgreementState; created: boolean }> {
    const { id, doc } = importAgreement(textForm)
    const role = roleOf(doc.body, this.myKey)
    if (!role) throw new ForeignAgreementError('the agreement names neither party as this node')
    const counterKey = doc.body[otherRole(role)].key
    const peer = this.peerByKey(counterKey)
    if (!peer)
      throw new UnknownPeerError(
        `the other party (${doc.body[otherRole(role)].org}) is not a peer of this node; add its card first`,
      )
    return this.withLock(id, async () => {
      const created = !this.agreements.has(id)
      const record = await this.mergeDocument(id, doc, role, peer, 'import')
      return { id, state: this.state(record), created }
    })
  }

  /** Store a verified document from the peer (wire or file), merging signatures into ours. */
  private async mergeDocument(
    id: string,
    doc: AgreementDocument,
    role: Role,
    peer: PeerRecord,
    via: 'wire' | 'import',
  ): Promise<AgreementRecord> {
    const theirs = otherRole(role)
    const existing = this.agreements.get(id)
    if (!doc.signatures[theirs] && !existing?.doc.signatures[theirs]) {
      throw new BadSignatureError(`the agreement is not signed by ${peer.alias}, the ${theirs}`)
    }
    const now = Date.now()
    if (!existing) {
      if (now >= doc.body.validUntil)
        throw new AgreementExpiredError(`agreement ${id} expired on ${iso(doc.body.validUntil)}`)
      const record: AgreementRecord = {
        id,
        doc,
        role,
        peer: peer.alias,
        proposedBy: doc.signatures[role] && !doc.signatures[theirs] ? role : theirs,
        stored: now,
        updated: now,
      }
      await this.save(record)
      await this.components.audit.append(via === 'wire' ? 'agreement.received' : 'agreement.imported', {
        id,
        peer: peer.alias,
        role,
        state: this.state(record),
      })
      return record
    }
    let changed = false
    for (const side of ['provider', 'consumer'] as const) {
      if (doc.signatures[side] && !existing.doc.signatures[side]) {
        existing.doc.signatures[side] = doc.signatures[side]
        changed = true
      }
    }
    if (changed) {
      await this.save(existing)
      await this.components.audit.append('agreement.active', { id, peer: peer.alias, via })
    }
    return existing
  }

  // ── agreements: messages from peers ────────────────────────────────────────────────────────

  private async onStream(stream: Stream, connection: Connection): Promise<void> {
    const peerId = connection.remotePeer.toString()
    const peer = this.peerByPeerId(peerId)
    if (!peer) {
      stream.abort(new FederationError('unknown peer'))
      return
    }
    let message: AgreementMessage
    let id: string
    let frame: unknown
    try {
      frame = await readFrame(stream, {
        signal: AbortSignal.timeout(this.init.messageTimeoutMs ?? 10_000),
      })
      ;({ message, id } = parseAgreementMessage(frame))
    } catch (error) {
      if (
        error instanceof FrameError ||
        (error as Error).name === 'AbortError' ||
        (error as Error).name === 'TimeoutError'
      ) {
        // A broken frame: reset the stream; the connection and other streams carry on.
        this.components.logger.warn(
          { peer: peer.alias, err: (error as Error).message },
          'bad agreement frame: stream reset',
        )
        void this.components.audit.append('protocol.bad_frame', {
          peer: peer.alias,
          reason: (error as Error).message,
        })
        stream.abort(error as Error)
        return
      }
      if ((frame as { t?: unknown } | undefined)?.t === 'succession') {
        // A forged or malformed succession statement: recorded as such; nothing changes.
        this.components.logger.warn(
          { peer: peer.alias, err: (error as Error).message },
          'key succession statement refused',
        )
        await this.refuse(stream, peer, undefined, error as Error, 'peer.key_succession_refused')
      } else await this.refuse(stream, peer, undefined, error as Error)
      return
    }
    try {
      await this.withLock(id, () => this.apply(message, id, peer))
      await writeFrame(stream, { ok: true })
      await stream.close()
    } catch (error) {
      if (message.t === 'succession') {
        const { from, to } = message.succession
        this.components.logger.warn(
          { peer: peer.alias, err: (error as Error).message },
          'key succession statement refused',
        )
        await this.refuse(stream, peer, undefined, error as Error, 'peer.key_succession_refused', {
          from: peerIdOfKey(from),
          to: peerIdOfKey(to),
        })
      } else await this.refuse(stream, peer, id, error as Error)
    }
  }

  private refuse(
    stream: Stream,
    peer: PeerRecord,
    id: string | undefined,
    error: Error,
    auditType = 'agreement.message_refused',
    details?: Record<string, unknown>,
  ): Promise<void> {
    return refuseStream(stream, { peer: peer.alias, id, error, auditType, details }, this.components)
  }

  /** Apply a checked message from `peer`. Throws a FederationError naming why it is refused. */
  private async apply(message: AgreementMessage, id: string, peer: PeerRecord): Promise<void> {
    if (message.t === 'succession') {
      await this.applySuccession(message.succession, peer)
      return
    }
    if (message.t === 'propose') {
      const role = roleOf(message.doc.body, this.myKey)
      if (!role) {
        const { provider, consumer } = message.doc.body
        if (this.ownSuccessions.some((s) => s.from === provider.key || s.from === consumer.key))
          throw new ForeignAgreementError(
            'the agreement names the key this node had before its key rotation; propose it to its current key',
          )
        throw new ForeignAgreementError('the agreement names neither party as this node')
      }
      if (!this.keysInForce(peer).includes(message.doc.body[otherRole(role)].key)) {
        throw new ForeignAgreementError(
          `the agreement does not name ${peer.alias}, who sent it, as the other party`,
        )
      }
      await this.mergeDocument(id, message.doc, role, peer, 'wire')
      return
    }
    const record = this.requireAgreement(id)
    if (record.peer !== peer.alias)
      throw new ForeignAgreementError(`agreement ${id} is not between this node and ${peer.alias}`)
    const theirs = otherRole(record.role)
    const state = this.state(record)
    switch (message.t) {
      case 'accept': {
        // Against the key the body names for them: that is what makes the document verify (the
        // body was matched to this peer when it was proposed).
        if (!verifyIdSignature(id, message.sig, record.doc.body[theirs].key)) {
          throw new BadSignatureError(`the acceptance of ${id} is not signed by ${peer.alias}`)
        }
        if (record.doc.signatures[theirs] === message.sig) return
        if (state === 'expired')
          throw new AgreementExpiredError(`agreement ${id} expired on ${iso(record.doc.body.validUntil)}`)
        if (state !== 'proposed') throw new AgreementStateError(`agreement ${id} is ${state}`)
        record.doc.signatures[theirs] = message.sig
        await this.save(record)
        await this.components.audit.append('agreement.active', { id, peer: peer.alias, by: 'peer' })
        return
      }
      case 'reject': {
        if (!this.keysInForce(peer).includes(message.rejection.by))
          throw new BadSignatureError(`the rejection of ${id} is not by ${peer.alias}`)
        if (state === 'rejected') return
        if (state !== 'proposed')
          throw new AgreementStateError(`agreement ${id} is ${state}; a rejection no longer applies`)
        record.rejection = message.rejection
        await this.save(record)
        await this.components.audit.append('agreement.rejected', {
          id,
          peer: peer.alias,
          by: 'peer',
          reason: message.rejection.reason,
        })
        return
      }
      case 'revoke': {
        if (!this.keysInForce(peer).includes(message.revocation.by))
          throw new BadSignatureError(`the revocation of ${id} is not by ${peer.alias}`)
        if (state === 'revoked') return
        if (state === 'rejected') throw new AgreementStateError(`agreement ${id} was rejected`)
        record.revocation = message.revocation
        this.transfers.endAgreement(id, 'revoked by the peer')
        await this.save(record)
        await this.components.audit.append('agreement.revoked', {
          id,
          peer: peer.alias,
          by: 'peer',
          reason: message.revocation.reason,
        })
        return
      }
    }
  }

  // ── key rotation ───────────────────────────────────────────────────────────────────────────

  /**
   * A peer's succession statement (signatures already checked by the parser): move the peer to
   * its new key under the same alias, keep the old key accepted until the grace ends, audit it.
   * Refused (and nothing changes) when the old key is no peer's, or not the current key of the
   * peer that sent it.
   */
  private async applySuccession(statement: KeySuccession, sender: PeerRecord): Promise<void> {
    const now = Date.now()
    // The statement again (a courier's retry, another replica's delivery): already applied.
    if (
      sender.publicKey === statement.to &&
      sender.retired?.some(
        (key) => key.publicKey === statement.from && key.succession.sigs.to === statement.sigs.to,
      )
    )
      return
    const owner = [...this.peersByAlias.values()].find(
      (peer) =>
        peer.publicKey === statement.from || peer.retired?.some((key) => key.publicKey === statement.from),
    )
    if (!owner)
      throw new SuccessionUnknownPeerError(
        `the statement replaces key ${peerIdOfKey(statement.from)}, which is the key of no peer of this node`,
      )
    if (owner.alias !== sender.alias)
      throw new SuccessionKeyMismatchError(
        `the statement replaces a key of ${owner.alias}, but ${sender.alias} sent it`,
      )
    if (sender.publicKey !== statement.from)
      throw new SuccessionKeyMismatchError(
        `the statement replaces a key ${sender.alias} no longer uses (its current key is ${sender.peerId})`,
      )
    if (statement.org !== sender.org)
      throw new KeySuccessionError(
        `the statement is for organisation '${statement.org}', but ${sender.alias} is '${sender.org}'`,
      )
    if (statement.to === this.myKey) throw new KeySuccessionError("the new key is this node's own")
    const other = this.peerByKey(statement.to)
    if (other) throw new KeySuccessionError(`the new key is already the key of peer ${other.alias}`)
    const fromPeerId = sender.peerId
    const toPeerId = peerIdOfKey(statement.to)
    const retired: RetiredPeerKey = {
      peerId: fromPeerId,
      publicKey: statement.from,
      succession: statement,
      until: statement.graceUntil,
    }
    const updated: PeerRecord = {
      ...sender,
      peerId: toPeerId,
      publicKey: statement.to,
      // Same hosts and ports, new identity.
      addrs: sender.addrs.map((addr) => addr.replace(`/p2p/${fromPeerId}`, `/p2p/${toPeerId}`)),
      retired: [...(sender.retired ?? []), retired].slice(-8),
    }
    await this.peersBucket!.put(updated.alias, updated)
    this.peersByAlias.set(updated.alias, updated)
    await this.components.audit.append('peer.key_succeeded', {
      peer: updated.alias,
      org: updated.org,
      from: fromPeerId,
      to: toPeerId,
      at: statement.at,
      oldKeyAcceptedUntil: statement.graceUntil,
      statement: { ...statement },
    })
    this.components.logger.info(
      {
        peer: updated.alias,
        from: fromPeerId,
        to: toPeerId,
        graceMs: Math.max(0, statement.graceUntil - now),
      },
      'peer moved to its new key',
    )
    this.host?.wake(toPeerId)
  }

  /**
   * Close the connections of peer keys whose grace ended (the gate refuses them from then on);
   * the first time, record it.
   */
  private retireExpiredPeerKeys(now: number): void {
    for (const peer of this.peersByAlias.values()) {
      for (const key of peer.retired ?? []) {
        if (key.until > now || this.closing.has(key.peerId)) continue
        const connected = this.host?.isConnected(key.peerId) ?? false
        if (key.closedAt && !connected) continue
        this.closing.add(key.peerId)
        void (async () => {
          if (connected) await this.host?.disconnect(key.peerId)
          const current = this.peersByAlias.get(peer.alias)
          const stored = current?.retired?.find((k) => k.peerId === key.peerId)
          if (current && stored && !stored.closedAt) {
            stored.closedAt = now
            await this.peersBucket!.put(current.alias, current)
            await this.components.audit.append('peer.key_retired', {
              peer: current.alias,
              peerId: key.peerId,
              until: key.until,
            })
          }
        })()
          .catch((error: Error) =>
            this.components.logger.warn(
              { peer: peer.alias, err: error.message },
              'retiring a peer key failed',
            ),
          )
          .finally(() => this.closing.delete(key.peerId))
      }
    }
  }

  /** This node's key successions changed (a rotation here or on another replica). */
  private onOwnSuccessions(successions: KeySuccession[]): void {
    this.ownSuccessions = successions
    if (!this.retiredWarned && successions.some((s) => s.from === this.myKey)) {
      this.retiredWarned = true
      // Another replica rotated the key this one still runs with: partners refuse it after the grace.
      this.components.logger.error(
        {},
        'the key of this replica was retired by a key rotation: copy keys/node.key from the replica that rotated it and restart this one',
      )
    }
  }

  /** This node's key successions, oldest first. */
  successions(): KeySuccession[] {
    return [...this.ownSuccessions]
  }

  /**
   * Tell every peer that this node's key is succeeded: the statement is queued in each peer's
   * outbox (delivered at once to connected peers, over the connection of the old key), then
   * recorded as this node's own. Returns the aliases it was queued for.
   */
  async announceSuccession(statement: KeySuccession): Promise<string[]> {
    const aliases = [...this.peersByAlias.keys()].sort()
    for (const alias of aliases) await this.enqueue(alias, { t: 'succession', succession: statement })
    // Recorded once queued everywhere: a node that stops in between finds it queued or not at all.
    const successions = [...this.ownSuccessions.filter((s) => s.to !== statement.to), statement]
    await this.identityBucket!.put(SUCCESSIONS_KEY, successions)
    this.ownSuccessions = successions
    return aliases
  }

  /** Aliases of the peers a succession statement still waits for (not yet acknowledged). */
  pendingSuccession(statement: KeySuccession): string[] {
    const pending = new Set<string>()
    for (const entry of this.outbox.values()) {
      if (entry.message.t === 'succession' && entry.message.succession.to === statement.to)
        pending.add(entry.peer)
    }
    return [...pending].sort()
  }

  /**
   * Wait until every connected peer has acknowledged (or refused) the statement, at most
   * `timeoutMs`. Peers that are not connected get it later (from a courier).
   */
  async awaitSuccession(statement: KeySuccession, timeoutMs: number): Promise<string[]> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const waiting = this.pendingSuccession(statement).filter((alias) => {
        const peer = this.peersByAlias.get(alias)
        return peer !== undefined && (this.host?.isConnected(peer.peerId) ?? false)
      })
      if (waiting.length === 0 || Date.now() >= deadline) return this.pendingSuccession(statement)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }

  /**
   * Peers that wait for one of this node's succession statements and are not connected (their
   * gate knows only the old key): a courier keyed by the old key delivers what is queued up to
   * and including the statement, retried with backoff while the peer is unreachable.
   */
  private runCouriers(now: number): void {
    const host = this.host
    if (!host || !this.components.retiredSigner) return
    for (const alias of new Set([...this.outbox.values()].map((entry) => entry.peer))) {
      const peer = this.peersByAlias.get(alias)
      if (!peer || host.isConnected(peer.peerId)) continue
      const state = this.couriers.get(alias) ?? { next: 0, backoffMs: COURIER_RETRY_MS, running: false }
      this.couriers.set(alias, state)
      if (state.running || state.next > now || this.delivering.has(alias)) continue
      const entries = this.pendingFor(alias)
      const last = entries.findIndex(
        (entry) => entry.message.t === 'succession' && entry.message.succession.from !== this.myKey,
      )
      if (last < 0) continue
      state.running = true
      void this.runCourier(peer, entries.slice(0, last + 1))
        .then((delivered) => {
          state.next = delivered ? 0 : Date.now() + state.backoffMs
          state.backoffMs = delivered ? COURIER_RETRY_MS : Math.min(state.backoffMs * 2, COURIER_MAX_RETRY_MS)
        })
        .finally(() => {
          state.running = false
        })
    }
  }

  private pendingFor(alias: string): OutboxEntry[] {
    return [...this.outbox.values()]
      .filter((entry) => entry.peer === alias)
      .sort((a, b) => a.key.localeCompare(b.key))
  }

  /** One courier run; true when everything it carried was delivered (or refused by the peer). */
  private async runCourier(peer: PeerRecord, entries: OutboxEntry[]): Promise<boolean> {
    const statement = (entries[entries.length - 1]!.message as { succession: KeySuccession }).succession
    const signer = await this.components.retiredSigner!(statement.from).catch(() => undefined)
    if (!signer) {
      this.outboxErrors.set(
        peer.alias,
        `the retired key ${peerIdOfKey(statement.from)} is no longer kept: ${peer.alias} cannot be told of the key rotation (send it the new card)`,
      )
      return false
    }
    this.delivering.add(peer.alias)
    try {
      return await withCourier(
        signer.privateKeySeed,
        peer,
        async (openStream) => {
          for (const entry of entries) {
            if (!this.outbox.has(entry.key)) continue
            if (!(await this.deliverOne(peer.alias, peer, entry, openStream))) return false
          }
          this.components.logger.info(
            { peer: peer.alias, messages: entries.length },
            'key succession delivered by courier (the peer was offline at the rotation)',
          )
          return true
        },
        { crypto: this.noise.crypto },
      )
    } catch (error) {
      this.outboxErrors.set(peer.alias, `courier: ${(error as Error).message}`)
      return false
    } finally {
      this.delivering.delete(peer.alias)
      // What was queued after the statement goes over the new key's connection.
      this.host?.wake(peer.peerId)
    }
  }

  // ── data transfer ──────────────────────────────────────────────────────────────────────────

  /** Flow counters of an agreement on this node. */
  flow(id: string): FlowStats {
    return this.transfers.flow(id)
  }

  /** Flow counters of every agreement, for metrics. */
  flowsByAgreement(): ReadonlyMap<string, FlowStats> {
    return this.transfers.flowsByAgreement()
  }

  // ── delivery ───────────────────────────────────────────────────────────────────────────────

  private async enqueue(peer: string, message: AgreementMessage): Promise<void> {
    const sequence = ++this.outboxSequence
    const key = `${peer}.${Date.now().toString().padStart(15, '0')}-${sequence.toString().padStart(8, '0')}`
    const entry: OutboxEntry = { key, peer, message, created: Date.now(), attempts: 0 }
    await this.outboxBucket!.put(key, entry)
    this.outbox.set(key, entry)
    void this.deliver(peer)
  }

  /**
   * Send a peer's queued messages in order while it is connected. A message queued while a
   * pass runs is sent by that pass (it looks again before it ends), not left for the timer:
   * a revocation must reach the peer at once.
   */
  private async deliver(alias: string): Promise<void> {
    if (this.delivering.has(alias)) {
      this.deliverAgain.add(alias)
      return
    }
    const peer = this.peersByAlias.get(alias)
    const host = this.host
    if (!peer || !host?.isConnected(peer.peerId)) return
    this.delivering.add(alias)
    try {
      do {
        this.deliverAgain.delete(alias)
        const entries = [...this.outbox.values()]
          .filter((entry) => entry.peer === alias)
          .sort((a, b) => a.key.localeCompare(b.key))
        for (const entry of entries) {
          if (!(await this.deliverOne(alias, peer, entry))) return
        }
      } while (this.deliverAgain.has(alias))
    } finally {
      this.delivering.delete(alias)
    }
  }

  /** Send one queued message; false when the link failed and the rest must wait. */
  private async deliverOne(
    alias: string,
    peer: PeerRecord,
    entry: OutboxEntry,
    openStream?: OpenStream,
  ): Promise<boolean> {
    try {
      await this.send(peer, entry.message, openStream)
      this.outboxErrors.delete(alias)
    } catch (error) {
      if (!(error instanceof PeerRefusedError)) {
        entry.attempts += 1
        entry.lastError = (error as Error).message
        this.outboxErrors.set(alias, entry.lastError)
        return false
      }
      // The peer checked the message and refused it: retrying cannot help.
      this.outboxErrors.set(alias, error.message)
      await this.components.audit.append(
        entry.message.t === 'succession' ? 'key.succession_refused' : 'agreement.delivery_refused',
        {
          peer: alias,
          type: entry.message.t,
          error: error.remoteName,
          reason: error.message,
        },
      )
    }
    this.outbox.delete(entry.key)
    await this.outboxBucket!.delete(entry.key)
    return true
  }

  private async send(peer: PeerRecord, message: AgreementMessage, openStream?: OpenStream): Promise<void> {
    const signal = AbortSignal.timeout(this.init.messageTimeoutMs ?? 10_000)
    const stream = openStream
      ? await openStream(AGREEMENT_PROTOCOL, { signal })
      : await this.host!.openStream(peer.peerId, AGREEMENT_PROTOCOL, { signal })
    try {
      await writeFrame(stream, message, { signal })
      await stream.close({ signal })
      const reply = parseReply(await readFrame(stream, { signal }))
      if (!reply.ok)
        throw new PeerRefusedError(reply.error, `${peer.alias} refused the ${message.t}: ${reply.message}`)
    } catch (error) {
      if (stream.status === 'open') stream.abort(error as Error)
      throw error
    }
  }

  /** Retry deliveries and record expiries. */
  /** Connections the gate refused since start (every attempt, audited or counted). */
  refusedConnections(): number {
    return this.refusals.total
  }

  private housekeeping(): void {
    const now = Date.now()
    for (const summary of this.refusals.flush(now)) {
      const reason = this.refusalReason(summary.peerId)
      this.components.logger.warn(summary, `connections refused: ${reason} (repeated)`)
      void this.components.audit.append('connection.refused', { ...summary, reason })
    }
    this.retireExpiredPeerKeys(now)
    this.runCouriers(now)
    for (const alias of new Set([...this.outbox.values()].map((entry) => entry.peer)))
      void this.deliver(alias)
    for (const record of this.agreements.values()) {
      const state = this.state(record, now)
      if (state !== 'active') this.transfers.endAgreement(record.id, state)
      else if (record.role === 'provider') this.transfers.ensureProviderSession(record, now)
      if (record.expiredAt || state !== 'expired') continue
      void this.withLock(record.id, async () => {
        if (record.expiredAt) return
        record.expiredAt = now
        await this.save(record)
        await this.components.audit.append('agreement.expired', { id: record.id, peer: record.peer })
      })
    }
  }
}

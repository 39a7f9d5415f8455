/**
 * The federation service: the peer directory and its connections, and the lifecycle of sharing
 * agreements between this node and its peers. Local actions (propose, accept, reject, revoke)
 * take effect here at once and are delivered to the peer through a durable outbox (`outbox.ts`), retried
 * until the peer acknowledges them. Messages from peers are checked against the agreement and
 * the authenticated sender before anything changes; repeats are harmless.
 *
 * Key rotation: a peer's succession statement (signed by its old and its new key) moves the peer
 * to its new key under the same alias; the old key stays accepted (gate, messages) until the
 * statement's grace ends. Agreements keep the keys they were signed with: whatever a party signs
 * later (batches, control commands, acceptances, revocations) is checked against the party's key
 * in force, found by following that chain. This node's own statements go through the outbox, and a
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
  SuccessionKeyMismatchError,
  SuccessionUnknownPeerError,
  UnknownPeerError,
} from './errors.ts'
import { type AuditSink, TransferFlows } from './flows.ts'
import { readFrame, writeFrame } from './frames.ts'
import { FederationHost, type PeerConnectionState } from './host.ts'
import { AGREEMENT_PROTOCOL, type AgreementMessage, parseAgreementMessage } from './messages.ts'
import { type NoiseCrypto, noiseCrypto } from './noise-crypto.ts'
import { Outbox } from './outbox.ts'
import { RefusalAggregator } from './refusals.ts'
import { refuseStream } from './refuse.ts'
import { SiteIndex } from './site-index.ts'
import {
  AGREEMENTS_BUCKET,
  type AgreementRecord,
  type BucketChange,
  IDENTITY_BUCKET,
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

export class Federation {
  private host: FederationHost | undefined
  private peersBucket: RecordBucket<PeerRecord> | undefined
  private agreementsBucket: RecordBucket<AgreementRecord> | undefined
  private readonly peersByAlias = new Map<string, PeerRecord>()
  private readonly agreements = new Map<string, AgreementRecord>()
  private readonly locks = new Map<string, Promise<unknown>>()
  private timer: ReturnType<typeof setInterval> | undefined
  private readonly myKey: string
  private readonly noise: NoiseCrypto
  private readonly outbox: Outbox
  private readonly siteIndex = new SiteIndex()
  private readonly refusals = new RefusalAggregator()
  private readonly transfers: TransferFlows
  private offReconnect: (() => void) | undefined
  private readonly control: ControlRelay
  private identityBucket: RecordBucket<KeySuccession[]> | undefined
  /** This node's own key successions, oldest first (shared by its replicas). */
  private ownSuccessions: KeySuccession[] = []
  /** Retired keys whose connections are being closed now. */
  private readonly closing = new Set<string>()
  private retiredWarned = false

  constructor(
    private readonly init: FederationInit,
    private readonly components: FederationComponents,
  ) {
    this.myKey = base64url(components.signer.publicKey)
    this.noise = init.noiseCrypto ?? noiseCrypto()
    const retiredSigner = components.retiredSigner
    this.outbox = new Outbox({
      logger: components.logger,
      audit: components.audit,
      peer: (alias) => this.peersByAlias.get(alias),
      host: () => this.host,
      myKey: () => this.myKey,
      ...(retiredSigner
        ? { retiredSeed: async (publicKey: string) => (await retiredSigner(publicKey))?.privateKeySeed }
        : {}),
      crypto: this.noise.crypto,
      messageTimeoutMs: init.messageTimeoutMs ?? 10_000,
    })
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
    await this.outbox.open(js, replicas)
    this.identityBucket = await RecordBucket.open<KeySuccession[]>(js, IDENTITY_BUCKET, replicas)
    await this.transfers.start()
    await this.siteIndex.start(js)
    // Other replicas of this node change the same buckets: follow them (watches first, so no
    // change falls between the reads below and the watch).
    await this.peersBucket.watch((change) => this.onPeerChange(change))
    await this.agreementsBucket.watch((change) => this.onAgreementChange(change))
    await this.outbox.follow()
    await this.identityBucket.watch((change) => this.onOwnSuccessions(change.value ?? []))
    this.ownSuccessions = (await this.identityBucket.get(SUCCESSIONS_KEY)) ?? []
    for (const peer of await this.peersBucket.list()) this.peersByAlias.set(peer.alias, peer)
    for (const record of await this.agreementsBucket.list()) this.agreements.set(record.id, record)
    await this.outbox.load()

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
          void this.outbox.deliver(peer.alias)
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
    for (const bucket of [this.peersBucket, this.agreementsBucket]) bucket?.stopWatching()
    this.outbox.stopWatching()
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
      ...(this.outbox.hasSuccessionFor(peer.alias) ? { keySuccessionPending: true } : {}),
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
      await this.outbox.enqueue(peer.alias, { t: 'propose', doc: record.doc })
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
      await this.outbox.enqueue(record.peer, { t: 'accept', id, sig })
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
      await this.outbox.enqueue(record.peer, { t: 'reject', rejection: record.rejection })
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
      await this.outbox.enqueue(record.peer, { t: 'revoke', revocation: record.revocation })
      return { id, state: this.state(record) }
    })
  }

  agreement(id: string): AgreementDetail {
    const record = this.requireAgreement(id)
    const pending = this.outbox.pending(record.peer)
    return {
      ...this.summary(record),
      body: record.doc.body,
      signatures: record.doc.signatures,
      proposedBy: record.proposedBy,
      rejection: record.rejection ?? null,
      revocation: record.revocation ?? null,
      outbox: { pending: pending.length, lastError: this.outbox.lastError(record.peer) },
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
    for (const alias of aliases) await this.outbox.enqueue(alias, { t: 'succession', succession: statement })
    // Recorded once queued everywhere: a node that stops in between finds it queued or not at all.
    const successions = [...this.ownSuccessions.filter((s) => s.to !== statement.to), statement]
    await this.identityBucket!.put(SUCCESSIONS_KEY, successions)
    this.ownSuccessions = successions
    return aliases
  }

  /** Aliases of the peers a succession statement still waits for (not yet acknowledged). */
  pendingSuccession(statement: KeySuccession): string[] {
    return this.outbox.pendingSuccession(statement)
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

  // ── data transfer ──────────────────────────────────────────────────────────────────────────

  /** Flow counters of an agreement on this node. */
  flow(id: string): FlowStats {
    return this.transfers.flow(id)
  }

  /** Flow counters of every agreement, for metrics. */
  flowsByAgreement(): ReadonlyMap<string, FlowStats> {
    return this.transfers.flowsByAgreement()
  }

  /** Connections the gate refused since start (every attempt, audited or counted). */
  refusedConnections(): number {
    return this.refusals.total
  }

  /** Refusals to summarise, peer keys to retire, couriers to send, deliveries to retry, expiries to record. */
  private housekeeping(): void {
    const now = Date.now()
    for (const summary of this.refusals.flush(now)) {
      const reason = this.refusalReason(summary.peerId)
      this.components.logger.warn(summary, `connections refused: ${reason} (repeated)`)
      void this.components.audit.append('connection.refused', { ...summary, reason })
    }
    this.retireExpiredPeerKeys(now)
    this.outbox.runCouriers(now)
    this.outbox.deliverAll()
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

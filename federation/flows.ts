/**
 * The transfer flows of this node's agreements: the provider sessions it opens to its peers,
 * the consumer sessions its peers open to it, their counters, and the state consumers keep in
 * KV `oe-transfer`. It owns no peer or agreement: it is told what exists by its components, so
 * one replica can run a flow without owning the peer directory.
 *
 * @example
 * const flows = new TransferFlows(tuning, { dataPlane, logger, audit, privateKey, siteOf, agreement, state, peer, peerByPeerId, host })
 * await flows.start()
 * flows.ensureProviderSession(record, Date.now()) // housekeeping, for each active agreement provided
 * flows.stopSessions(id, 'revoked')
 */
import type { KeyObject } from 'node:crypto'
import type { Connection, Stream } from '@libp2p/interface'
import type { DataPlane, Lease, LeaseManager, Logger } from '../data-plane/index.ts'
import type { AgreementState } from './agreement.ts'
import { ConsumerSession } from './consumer-session.ts'
import {
  AgreementNotFoundError,
  AgreementStateError,
  FederationError,
  ForeignAgreementError,
  FrameError,
  TransferBusyError,
} from './errors.ts'
import type { FederationHost } from './host.ts'
import { ProviderSession } from './provider-session.ts'
import { type AgreementRecord, type PeerRecord, RecordBucket, TRANSFER_BUCKET } from './stores.ts'
import {
  type AgreementView,
  emptyStats,
  type FlowStats,
  MAX_BATCH_FRAME_BYTES,
  remoteKey,
  TRANSFER_PROTOCOL,
  type TransferState,
  type TransferTuning,
} from './transfer.ts'
import { Channel } from './transfer-channel.ts'

export interface AuditSink {
  append(type: string, data: Record<string, unknown>): Promise<unknown>
}

export interface TransferFlowsComponents {
  dataPlane: DataPlane
  logger: Logger
  audit: AuditSink
  /** The node key: batches are signed with it. */
  privateKey: KeyObject
  /** The site of one of this node's resources, from its standing data. */
  siteOf: (kind: string, rid: string) => string | undefined
  /** An agreement as it is now. */
  agreement(id: string): AgreementRecord | undefined
  state(record: AgreementRecord): AgreementState
  peer(alias: string): PeerRecord | undefined
  peerByPeerId(peerId: string): PeerRecord | undefined
  host(): FederationHost | undefined
  /**
   * Single-owner work among the replicas of this node: each agreement's outgoing session runs
   * on the replica holding lease `transfer.<id>`, each incoming one on the replica holding
   * `transfer-in.<id>`.
   */
  leases: LeaseManager
}

/** How long after a provider session was tried the next may be. */
const SESSION_RETRY_MS = 1_000

/** The lease that makes a replica the one sending an agreement's data. */
export const providerLeaseName = (id: string): string => `transfer.${id}`
/** The lease that makes a replica the one receiving an agreement's data. */
export const consumerLeaseName = (id: string): string => `transfer-in.${id}`

export class TransferFlows {
  private states: RecordBucket<TransferState> | undefined
  private readonly flows = new Map<string, FlowStats>()
  /** Per agreement consumed: the provider's resources' sites, as its standing data told them. */
  private readonly providerSites = new Map<string, Map<string, string>>()
  private readonly providerSessions = new Map<string, ProviderSession>()
  private readonly consumerSessions = new Map<string, ConsumerSession>()
  private readonly sessionRetryAt = new Map<string, number>()
  /** Agreements whose provider lease this replica contends for, and the lease while held. */
  private readonly providerLeases = new Map<string, Lease | undefined>()
  /** Provider sessions' runs (until their JetStream reads are closed), one after another. */
  private readonly providerRuns = new Map<string, Promise<void>>()
  /** Consumer sessions' runs, so a replacing session starts only once the one before has ended. */
  private readonly consumerRuns = new Map<string, Promise<void>>()
  /** A consumer lease being given up: a new session waits for it rather than race it. */
  private readonly consumerReleases = new Map<string, Promise<void>>()
  /** Provider leases being given up. */
  private readonly providerReleases = new Set<Promise<void>>()

  constructor(
    private readonly tuning: TransferTuning,
    private readonly components: TransferFlowsComponents,
    /** Counters to carry on from (the flows of a host this one replaces, e.g. after a key rotation). */
    previous?: ReadonlyMap<string, FlowStats>,
  ) {
    for (const [id, stats] of previous ?? []) this.flows.set(id, stats)
  }

  async start(): Promise<void> {
    this.states ??= await RecordBucket.open<TransferState>(
      this.components.dataPlane.jetstream,
      TRANSFER_BUCKET,
      { replicas: this.components.dataPlane.replicas },
    )
  }

  stop(reason: string): void {
    for (const id of new Set([...this.providerSessions.keys(), ...this.consumerSessions.keys()])) {
      this.stopSessions(id, reason)
    }
    for (const id of [...this.providerLeases.keys()]) void this.releaseProvider(id)
  }

  /**
   * The agreement no longer flows (revoked, expired, …): end its sessions and stop contending
   * for its provider lease, so the lease is free at once.
   */
  endAgreement(id: string, reason: string): void {
    this.stopSessions(id, reason)
    if (this.providerLeases.has(id)) void this.releaseProvider(id)
  }

  private async releaseProvider(id: string): Promise<void> {
    this.providerLeases.delete(id)
    const release = this.components.leases.release(providerLeaseName(id))
    this.providerReleases.add(release)
    try {
      await release
    } finally {
      this.providerReleases.delete(release)
    }
  }

  /**
   * After `stop`: wait (at most `timeoutMs`) until every session has closed its reads and every
   * lease is given up, so flows that replace these (a host restarted with a new key) start clean.
   */
  async settled(timeoutMs: number): Promise<void> {
    const pending = Promise.allSettled([
      ...this.providerRuns.values(),
      ...this.consumerRuns.values(),
      ...this.consumerReleases.values(),
      ...this.providerReleases,
    ])
    let timer: ReturnType<typeof setTimeout> | undefined
    await Promise.race([pending, new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))])
    clearTimeout(timer)
  }

  /** Flow counters of an agreement on this node. */
  flow(id: string): FlowStats {
    let stats = this.flows.get(id)
    if (!stats) {
      stats = emptyStats()
      this.flows.set(id, stats)
    }
    return stats
  }

  /** Flow counters of every agreement, for metrics. */
  flowsByAgreement(): ReadonlyMap<string, FlowStats> {
    return this.flows
  }

  /** Whether a session of the agreement runs on this node now. */
  hasSession(id: string): boolean {
    return this.providerSessions.has(id) || this.consumerSessions.has(id)
  }

  /** The site of a provider's resource, as its standing data under the agreement told it. */
  providerSiteOf(id: string, kind: string, rid: string): string | undefined {
    return this.providerSites.get(id)?.get(`${kind}.${rid}`)
  }

  /**
   * Start every provider session afresh now: JetStream acks sent while NATS was away are lost,
   * and a consumer whose deliveries wait on them would stall until the provider's stall check.
   */
  restartProviderSessions(reason: string): void {
    for (const id of [...this.providerSessions.keys()]) {
      this.stopSessions(id, reason)
      this.sessionRetryAt.delete(id)
    }
  }

  /** End every transfer session of an agreement at once (revocation, expiry, shutdown). */
  stopSessions(id: string, reason: string): void {
    const provider = this.providerSessions.get(id)
    if (provider) {
      this.providerSessions.delete(id)
      provider.stop(reason)
    }
    const consumer = this.consumerSessions.get(id)
    if (consumer) {
      this.consumerSessions.delete(id)
      consumer.stop(reason)
    }
  }

  /**
   * Open a provider session for an active agreement this node provides, unless one runs or was
   * just tried, and only on the replica that holds the agreement's provider lease (contending
   * for it from the first call on).
   */
  ensureProviderSession(record: AgreementRecord, now: number): void {
    const lease = this.providerLease(record.id)
    if (!lease?.valid(now)) return
    if (this.providerSessions.has(record.id) || (this.sessionRetryAt.get(record.id) ?? 0) > now) return
    const peer = this.components.peer(record.peer)
    const host = this.components.host()
    if (!peer || !host?.isConnected(peer.peerId)) return
    this.sessionRetryAt.set(record.id, now + SESSION_RETRY_MS)
    // A session starts only once the one before has closed its JetStream reads: it recreates
    // the same durable consumer, and a read still open would take messages from it.
    const previous = this.providerRuns.get(record.id)
    const run = (async () => {
      if (previous) await previous
      await this.runProviderSession(record, peer, host, lease)
    })()
    this.providerRuns.set(record.id, run)
    void run.finally(() => {
      if (this.providerRuns.get(record.id) === run) this.providerRuns.delete(record.id)
    })
  }

  private providerLease(id: string): Lease | undefined {
    if (this.providerLeases.has(id)) return this.providerLeases.get(id)
    const { leases, logger } = this.components
    this.providerLeases.set(id, undefined)
    leases.acquire(providerLeaseName(id), {
      onAcquired: (lease) => {
        if (!this.providerLeases.has(id)) return
        this.providerLeases.set(id, lease)
        // A new owner starts at once, from what the consumer holds.
        this.sessionRetryAt.delete(id)
        logger.info({ id, fence: lease.fence }, 'this replica now sends the agreement (provider lease)')
        const record = this.components.agreement(id)
        if (record && this.components.state(record) === 'active')
          this.ensureProviderSession(record, Date.now())
      },
      onLost: (reason) => {
        if (this.providerLeases.has(id)) this.providerLeases.set(id, undefined)
        this.flow(id).lastError = `provider lease lost: ${reason}`
        const session = this.providerSessions.get(id)
        if (session) {
          this.providerSessions.delete(id)
          session.stop(`provider lease lost: ${reason}`)
        }
      },
    })
    return undefined
  }

  private view(record: AgreementRecord): AgreementView {
    return {
      id: record.id,
      doc: record.doc,
      peer: record.peer,
      ...(record.rejection ? { rejection: record.rejection } : {}),
      ...(record.revocation ? { revocation: record.revocation } : {}),
    }
  }

  private providerSitesOf(id: string): Map<string, string> {
    let sites = this.providerSites.get(id)
    if (!sites) {
      sites = new Map()
      this.providerSites.set(id, sites)
    }
    return sites
  }

  private async runProviderSession(
    record: AgreementRecord,
    peer: PeerRecord,
    host: FederationHost,
    lease: Lease,
  ): Promise<void> {
    let session: ProviderSession | undefined
    // The lease may have gone while the session before was closing.
    if (!lease.valid() || this.components.state(record) !== 'active') return
    try {
      const stream = await host.openStream(peer.peerId, TRANSFER_PROTOCOL, {
        signal: AbortSignal.timeout(5_000),
      })
      session = await ProviderSession.open(this.view(record), stream, {
        dataPlane: this.components.dataPlane,
        logger: this.components.logger,
        privateKey: this.components.privateKey,
        siteOf: this.components.siteOf,
        stats: this.flow(record.id),
        tuning: this.tuning,
        lease,
      })
      if (
        this.components.state(record) !== 'active' ||
        this.providerSessions.has(record.id) ||
        !lease.valid()
      ) {
        session.stop('no longer needed')
        return
      }
      this.providerSessions.set(record.id, session)
      this.components.logger.info({ id: record.id, peer: peer.alias }, 'transfer session started (provider)')
      await session.run()
    } catch (error) {
      this.flow(record.id).lastError = (error as Error).message
    } finally {
      if (session && this.providerSessions.get(record.id) === session) {
        this.providerSessions.delete(record.id)
        // A session that ran its while is followed at once (the consumer holds what it took);
        // one that failed right away waits out SESSION_RETRY_MS.
        const current = this.components.agreement(record.id)
        if (current && this.components.state(current) === 'active')
          this.ensureProviderSession(current, Date.now())
      }
    }
  }

  /** A provider opened `/oe/transfer/1.0.0` to this node: check its hello, then consume. */
  async onTransferStream(stream: Stream, connection: Connection): Promise<void> {
    const { audit, logger } = this.components
    const peer = this.components.peerByPeerId(connection.remotePeer.toString())
    if (!peer) {
      stream.abort(new FederationError('unknown peer'))
      return
    }
    const channel = new Channel(stream, MAX_BATCH_FRAME_BYTES)
    let id = ''
    try {
      const hello = (await Promise.race([channel.next(), Bun.sleep(10_000).then(() => 'timeout')])) as
        | { t?: string; id?: string }
        | 'timeout'
        | undefined
      if (hello === 'timeout' || hello?.t !== 'hello' || typeof hello.id !== 'string') {
        throw new FrameError('expected a hello frame')
      }
      id = hello.id
      const record = this.components.agreement(id)
      if (!record) throw new AgreementNotFoundError(id)
      if (record.peer !== peer.alias)
        throw new ForeignAgreementError(`agreement ${id} is not between this node and ${peer.alias}`)
      if (record.role !== 'consumer')
        throw new AgreementStateError(`this node is not the consumer of agreement ${id}`)
      const state = this.components.state(record)
      if (state !== 'active') throw new AgreementStateError(`agreement ${id} is ${state}`)
      this.stopSessions(id, 'replaced by a new session')
      // The session before must have ended (its last batch published, its mark stored) before
      // this one reads what the consumer holds.
      await this.consumerRuns.get(id)
      await this.consumerReleases.get(id)
      // One replica of this node receives an agreement's data at a time.
      const lease = await this.components.leases.tryAcquire(consumerLeaseName(id))
      if (!lease)
        throw new TransferBusyError(`another replica of this node receives agreement ${id} now; try again`)
      if (this.consumerSessions.has(id)) this.stopSessions(id, 'replaced by a new session')
      const providerKey = remoteKey(connection.remotePeer)
      const session = new ConsumerSession(this.view(record), channel, {
        ...(providerKey ? { providerKey } : {}),
        dataPlane: this.components.dataPlane,
        logger,
        stats: this.flow(id),
        sites: this.providerSitesOf(id),
        states: this.states!,
        tuning: this.tuning,
        lease,
        current: () => {
          const current = this.components.agreement(id)
          return current ? this.view(current) : undefined
        },
        onViolation: (reason, details) => {
          logger.warn(
            { id, peer: peer.alias, reason },
            'provider violated the agreement or the transfer protocol; session cut',
          )
          void audit.append('transfer.violation', { id, peer: peer.alias, reason, ...details })
        },
        onReceipt: (receipt) => {
          // The last receipt of a session may come as the node stops and its audit log closes.
          audit.append('transfer.received', { id, peer: peer.alias, ...receipt }).catch((error) => {
            logger.warn({ id, err: (error as Error).message }, 'transfer receipt not audited')
          })
        },
      })
      this.consumerSessions.set(id, session)
      const onLeaseLost = (): void => {
        // This replica could not keep the lease (NATS unreachable, say): it stops receiving.
        this.flow(id).lastError =
          `consumer lease lost: ${String((lease.signal.reason as Error)?.message ?? '')}`
        session.stop('consumer lease lost')
      }
      lease.signal.addEventListener('abort', onLeaseLost, { once: true })
      logger.info({ id, peer: peer.alias, fence: lease.fence }, 'transfer session started (consumer)')
      const run = session.run()
      this.consumerRuns.set(id, run)
      try {
        await run
      } finally {
        lease.signal.removeEventListener('abort', onLeaseLost)
        if (this.consumerRuns.get(id) === run) this.consumerRuns.delete(id)
        if (this.consumerSessions.get(id) === session) this.consumerSessions.delete(id)
        // Free at once for whichever replica the provider reaches next (unless a session that
        // replaced this one on this replica holds it).
        if (!this.consumerSessions.has(id)) {
          const released = this.components.leases.release(consumerLeaseName(id)).catch(() => {})
          this.consumerReleases.set(id, released)
          void released.then(() => {
            if (this.consumerReleases.get(id) === released) this.consumerReleases.delete(id)
          })
        }
      }
    } catch (error) {
      const name = error instanceof FederationError ? error.name : 'Error'
      await audit.append('transfer.refused', {
        peer: peer.alias,
        ...(id ? { id } : {}),
        error: name,
        reason: (error as Error).message,
      })
      try {
        await channel.send({ t: 'error', error: name, message: (error as Error).message })
      } catch {
        // The stream may be gone already.
      }
      channel.abort(error as Error)
    }
  }
}

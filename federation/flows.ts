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
import type { DataPlane, Logger } from '../data-plane/index.ts'
import type { AgreementState } from './agreement.ts'
import { ConsumerSession } from './consumer-session.ts'
import {
  AgreementNotFoundError,
  AgreementStateError,
  FederationError,
  ForeignAgreementError,
  FrameError,
} from './errors.ts'
import type { FederationHost } from './host.ts'
import { ProviderSession } from './provider-session.ts'
import { type AgreementRecord, type PeerRecord, RecordBucket, TRANSFER_BUCKET } from './stores.ts'
import {
  type AgreementView,
  emptyStats,
  type FlowStats,
  MAX_BATCH_FRAME_BYTES,
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
}

/** How long after a provider session was tried the next may be. */
const SESSION_RETRY_MS = 1_000

export class TransferFlows {
  private states: RecordBucket<TransferState> | undefined
  private readonly flows = new Map<string, FlowStats>()
  /** Per agreement consumed: the provider's resources' sites, as its standing data told them. */
  private readonly providerSites = new Map<string, Map<string, string>>()
  private readonly providerSessions = new Map<string, ProviderSession>()
  private readonly consumerSessions = new Map<string, ConsumerSession>()
  private readonly sessionRetryAt = new Map<string, number>()

  constructor(
    private readonly tuning: TransferTuning,
    private readonly components: TransferFlowsComponents,
  ) {}

  async start(): Promise<void> {
    this.states ??= await RecordBucket.open<TransferState>(
      this.components.dataPlane.jetstream,
      TRANSFER_BUCKET,
    )
  }

  stop(reason: string): void {
    for (const id of new Set([...this.providerSessions.keys(), ...this.consumerSessions.keys()])) {
      this.stopSessions(id, reason)
    }
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

  /** Open a provider session for an active agreement this node provides, unless one runs or was just tried. */
  ensureProviderSession(record: AgreementRecord, now: number): void {
    if (this.providerSessions.has(record.id) || (this.sessionRetryAt.get(record.id) ?? 0) > now) return
    const peer = this.components.peer(record.peer)
    const host = this.components.host()
    if (!peer || !host?.isConnected(peer.peerId)) return
    this.sessionRetryAt.set(record.id, now + SESSION_RETRY_MS)
    void this.runProviderSession(record, peer, host)
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
  ): Promise<void> {
    let session: ProviderSession | undefined
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
      })
      if (this.components.state(record) !== 'active' || this.providerSessions.has(record.id)) {
        session.stop('no longer needed')
        return
      }
      this.providerSessions.set(record.id, session)
      this.components.logger.info({ id: record.id, peer: peer.alias }, 'transfer session started (provider)')
      await session.run()
    } catch (error) {
      this.flow(record.id).lastError = (error as Error).message
    } finally {
      if (session && this.providerSessions.get(record.id) === session) this.providerSessions.delete(record.id)
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
      const session = new ConsumerSession(this.view(record), channel, {
        dataPlane: this.components.dataPlane,
        logger,
        stats: this.flow(id),
        sites: this.providerSitesOf(id),
        states: this.states!,
        tuning: this.tuning,
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
      logger.info({ id, peer: peer.alias }, 'transfer session started (consumer)')
      try {
        await session.run()
      } finally {
        if (this.consumerSessions.get(id) === session) this.consumerSessions.delete(id)
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

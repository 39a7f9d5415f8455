/**
 * The durable outbox: agreement messages (propose, accept, reject, revoke) and this node's key
 * succession statements wait here, in KV `oe-outbox` shared by the node's replicas, until the peer
 * acknowledges or refuses them. A peer's messages go in order, one pass at a time, whenever it is
 * connected; a message queued while a pass runs is sent by that pass. A peer that was offline at
 * a key rotation knows only the old key, so a courier keyed by the retired key (`courier.ts`)
 * carries what is queued up to and including the statement.
 *
 * @example
 * const outbox = new Outbox(components)
 * await outbox.open(js, { replicas: 3 })
 * await outbox.follow()
 * await outbox.load()
 * await outbox.enqueue('acme', { t: 'revoke', revocation })
 */
import type { ICryptoInterface } from '@chainsafe/libp2p-noise'
import type { JetStreamClient } from '@nats-io/jetstream'
import type { Logger } from '../data-plane/index.ts'
import { type OpenStream, withCourier } from './courier.ts'
import { PeerRefusedError } from './errors.ts'
import type { AuditSink } from './flows.ts'
import { readFrame, writeFrame } from './frames.ts'
import type { FederationHost } from './host.ts'
import { AGREEMENT_PROTOCOL, type AgreementMessage, parseReply } from './messages.ts'
import {
  type BucketChange,
  OUTBOX_BUCKET,
  type OutboxEntry,
  type PeerRecord,
  RecordBucket,
} from './stores.ts'
import { type KeySuccession, peerIdOfKey } from './succession.ts'

const COURIER_RETRY_MS = 1_000
const COURIER_MAX_RETRY_MS = 15_000

export interface OutboxComponents {
  logger: Logger
  audit: AuditSink
  /** The peer of an alias, as the directory has it now. */
  peer: (alias: string) => PeerRecord | undefined
  /** The libp2p host, while the federation runs. */
  host: () => FederationHost | undefined
  /** This node's public key now (base64url): statements that replace it are not a courier's. */
  myKey: () => string
  /** The seed of a key this node retired, to carry its succession statement to an offline peer. */
  retiredSeed?: (publicKey: string) => Promise<Uint8Array | undefined>
  /** Noise's ciphers, for the courier's connection. */
  crypto: ICryptoInterface
  /** How long one message exchange may take. */
  messageTimeoutMs: number
}

export class Outbox {
  private bucket: RecordBucket<OutboxEntry> | undefined
  private readonly entries = new Map<string, OutboxEntry>()
  private sequence = 0
  private readonly delivering = new Set<string>()
  private readonly deliverAgain = new Set<string>()
  private readonly errors = new Map<string, string>()
  /** Per peer alias, when its courier may run next, and its current backoff. */
  private readonly couriers = new Map<string, { next: number; backoffMs: number; running: boolean }>()

  constructor(private readonly components: OutboxComponents) {}

  async open(js: JetStreamClient, options: { replicas: number }): Promise<void> {
    this.bucket = await RecordBucket.open<OutboxEntry>(js, OUTBOX_BUCKET, options)
  }

  /** Follow the changes other replicas make (before `load`, so that none falls in between). */
  async follow(): Promise<void> {
    await this.bucket!.watch((change) => this.onChange(change))
  }

  async load(): Promise<void> {
    for (const entry of await this.bucket!.list()) this.entries.set(entry.key, entry)
    this.sequence = this.entries.size
  }

  stopWatching(): void {
    this.bucket?.stopWatching()
  }

  private onChange(change: BucketChange<OutboxEntry>): void {
    if (!change.value) {
      this.entries.delete(change.key)
      return
    }
    this.entries.set(change.key, change.value)
    void this.deliver(change.value.peer)
  }

  /** A peer's queued messages, oldest first. */
  pending(alias: string): OutboxEntry[] {
    return [...this.entries.values()]
      .filter((entry) => entry.peer === alias)
      .sort((a, b) => a.key.localeCompare(b.key))
  }

  /** Why the last attempt to reach a peer failed, while it has not succeeded since. */
  lastError(alias: string): string | null {
    return this.errors.get(alias) ?? null
  }

  /** Whether one of this node's key succession statements still waits for the peer. */
  hasSuccessionFor(alias: string): boolean {
    return [...this.entries.values()].some(
      (entry) => entry.peer === alias && entry.message.t === 'succession',
    )
  }

  /** Aliases of the peers a succession statement still waits for (not yet acknowledged). */
  pendingSuccession(statement: KeySuccession): string[] {
    const pending = new Set<string>()
    for (const entry of this.entries.values()) {
      if (entry.message.t === 'succession' && entry.message.succession.to === statement.to)
        pending.add(entry.peer)
    }
    return [...pending].sort()
  }

  /** Queue a message for a peer (durably), and send it at once if the peer is connected. */
  async enqueue(peer: string, message: AgreementMessage): Promise<void> {
    const sequence = ++this.sequence
    const key = `${peer}.${Date.now().toString().padStart(15, '0')}-${sequence.toString().padStart(8, '0')}`
    const entry: OutboxEntry = { key, peer, message, created: Date.now(), attempts: 0 }
    await this.bucket!.put(key, entry)
    this.entries.set(key, entry)
    void this.deliver(peer)
  }

  /** Try again for every peer that has messages waiting (housekeeping). */
  deliverAll(): void {
    for (const alias of new Set([...this.entries.values()].map((entry) => entry.peer)))
      void this.deliver(alias)
  }

  /**
   * Send a peer's queued messages in order while it is connected. A message queued while a
   * pass runs is sent by that pass (it looks again before it ends), not left for the timer:
   * a revocation must reach the peer at once.
   */
  async deliver(alias: string): Promise<void> {
    if (this.delivering.has(alias)) {
      this.deliverAgain.add(alias)
      return
    }
    const peer = this.components.peer(alias)
    const host = this.components.host()
    if (!peer || !host?.isConnected(peer.peerId)) return
    this.delivering.add(alias)
    try {
      do {
        this.deliverAgain.delete(alias)
        for (const entry of this.pending(alias)) {
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
      this.errors.delete(alias)
    } catch (error) {
      if (!(error instanceof PeerRefusedError)) {
        entry.attempts += 1
        entry.lastError = (error as Error).message
        this.errors.set(alias, entry.lastError)
        return false
      }
      // The peer checked the message and refused it: retrying cannot help.
      this.errors.set(alias, error.message)
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
    this.entries.delete(entry.key)
    await this.bucket!.delete(entry.key)
    return true
  }

  private async send(peer: PeerRecord, message: AgreementMessage, openStream?: OpenStream): Promise<void> {
    const signal = AbortSignal.timeout(this.components.messageTimeoutMs)
    const stream = openStream
      ? await openStream(AGREEMENT_PROTOCOL, { signal })
      : await this.components.host()!.openStream(peer.peerId, AGREEMENT_PROTOCOL, { signal })
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

  /**
   * Peers that wait for one of this node's succession statements and are not connected (their
   * gate knows only the old key): a courier keyed by the old key delivers what is queued up to
   * and including the statement, retried with backoff while the peer is unreachable.
   */
  runCouriers(now: number): void {
    const host = this.components.host()
    if (!host || !this.components.retiredSeed) return
    for (const alias of new Set([...this.entries.values()].map((entry) => entry.peer))) {
      const peer = this.components.peer(alias)
      if (!peer || host.isConnected(peer.peerId)) continue
      const state = this.couriers.get(alias) ?? { next: 0, backoffMs: COURIER_RETRY_MS, running: false }
      this.couriers.set(alias, state)
      if (state.running || state.next > now || this.delivering.has(alias)) continue
      const entries = this.pending(alias)
      const myKey = this.components.myKey()
      const last = entries.findIndex(
        (entry) => entry.message.t === 'succession' && entry.message.succession.from !== myKey,
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

  /** One courier run; true when everything it carried was delivered (or refused by the peer). */
  private async runCourier(peer: PeerRecord, entries: OutboxEntry[]): Promise<boolean> {
    const statement = (entries[entries.length - 1]!.message as { succession: KeySuccession }).succession
    const seed = await this.components.retiredSeed!(statement.from).catch(() => undefined)
    if (!seed) {
      this.errors.set(
        peer.alias,
        `the retired key ${peerIdOfKey(statement.from)} is no longer kept: ${peer.alias} cannot be told of the key rotation (send it the new card)`,
      )
      return false
    }
    this.delivering.add(peer.alias)
    try {
      return await withCourier(
        seed,
        peer,
        async (openStream) => {
          for (const entry of entries) {
            if (!this.entries.has(entry.key)) continue
            if (!(await this.deliverOne(peer.alias, peer, entry, openStream))) return false
          }
          this.components.logger.info(
            { peer: peer.alias, messages: entries.length },
            'key succession delivered by courier (the peer was offline at the rotation)',
          )
          return true
        },
        { crypto: this.components.crypto },
      )
    } catch (error) {
      this.errors.set(peer.alias, `courier: ${(error as Error).message}`)
      return false
    } finally {
      this.delivering.delete(peer.alias)
      // What was queued after the statement goes over the new key's connection.
      this.components.host()?.wake(peer.peerId)
    }
  }
}

/**
 * The replicas of one organisation's node: each announces itself (id, libp2p addresses, API)
 * in KV `oe-replicas` with a heartbeat, and follows the others', so the node card lists every
 * replica's addresses and `status` shows who is there. The bucket drops entries nobody renews
 * (a replica gone for good); a replica that stops removes its own at once.
 *
 * @example
 * const replicas = new ReplicaDirectory({ replicaId }, { kv, logger, describe: () => ({ addrs, api }) })
 * await replicas.start()
 * replicas.addresses() // every live replica's libp2p addresses, this one's first
 */
import type { JetStreamClient } from '@nats-io/jetstream'
import { type KV, Kvm } from '@nats-io/kv'
import type { Logger } from '../data-plane/index.ts'

export const REPLICAS_BUCKET = 'oe-replicas'

export interface ReplicaDirectoryInit {
  replicaId: string
  /** How often this replica renews its entry. Default 2 s. */
  heartbeatMs?: number
  /** A replica not heard of for this long is left out of the card. Default 10 s. */
  staleMs?: number
}

export interface ReplicaDirectoryComponents {
  kv: KV
  logger: Logger
  /** What this replica announces now. */
  describe: () => { addrs: string[]; api: string; version: string }
}

/** What a replica announces (JSON in the bucket). */
interface ReplicaEntry {
  id: string
  addrs: string[]
  api: string
  version: string
  startedAt: number
}

/** A replica as `status` shows it. */
export interface ReplicaView {
  id: string
  addrs: string[]
  api: string
  version: string
  startedAt: string
  /** How long ago this replica last heard its heartbeat (its own clock). */
  heartbeatAgoMs: number
  self: boolean
  stale: boolean
}

const encoder = new TextEncoder()
const decoder = new TextDecoder()

export class ReplicaDirectory {
  private readonly seen = new Map<string, { entry: ReplicaEntry; seenAt: number }>()
  private readonly startedAt = Date.now()
  private timer: ReturnType<typeof setInterval> | undefined
  private watcher: { stop(): void } | undefined

  constructor(
    private readonly init: ReplicaDirectoryInit,
    private readonly components: ReplicaDirectoryComponents,
  ) {}

  static openBucket(js: JetStreamClient, options: { replicas?: number } = {}): Promise<KV> {
    return new Kvm(js).create(REPLICAS_BUCKET, { history: 1, replicas: options.replicas ?? 1, ttl: 120_000 })
  }

  get replicaId(): string {
    return this.init.replicaId
  }

  async start(): Promise<void> {
    if (this.timer) return
    const watcher = await this.components.kv.watch()
    this.watcher = watcher
    void (async () => {
      for await (const change of watcher) {
        if (change.operation !== 'PUT') {
          this.seen.delete(change.key)
          continue
        }
        try {
          const entry = JSON.parse(decoder.decode(change.value)) as ReplicaEntry
          if (typeof entry.id === 'string' && Array.isArray(entry.addrs))
            this.seen.set(change.key, { entry, seenAt: Date.now() })
        } catch {
          // Not an entry of ours: ignored.
        }
      }
    })().catch(() => {})
    await this.heartbeat()
    this.timer = setInterval(() => void this.heartbeat(), this.init.heartbeatMs ?? 2_000)
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    this.timer = undefined
    this.watcher?.stop()
    await this.components.kv.delete(this.init.replicaId).catch(() => {})
  }

  private async heartbeat(): Promise<void> {
    const described = this.components.describe()
    const entry: ReplicaEntry = { id: this.init.replicaId, ...described, startedAt: this.startedAt }
    try {
      await this.components.kv.put(this.init.replicaId, encoder.encode(JSON.stringify(entry)))
      this.seen.set(this.init.replicaId, { entry, seenAt: Date.now() })
    } catch (error) {
      this.components.logger.debug({ err: (error as Error).message }, 'replica heartbeat not stored')
    }
  }

  /** Every replica this one knows of, this one first. */
  list(now = Date.now()): ReplicaView[] {
    const staleMs = this.init.staleMs ?? 10_000
    return [...this.seen.values()]
      .map(({ entry, seenAt }) => ({
        id: entry.id,
        addrs: entry.addrs,
        api: entry.api,
        version: entry.version,
        startedAt: new Date(entry.startedAt).toISOString(),
        heartbeatAgoMs: Math.max(0, now - seenAt),
        self: entry.id === this.init.replicaId,
        stale: now - seenAt > staleMs,
      }))
      .sort((a, b) => Number(b.self) - Number(a.self) || a.id.localeCompare(b.id))
  }

  /** The libp2p addresses of every live replica, this one's first, each once. */
  addresses(own: readonly string[]): string[] {
    const addrs = [...own]
    for (const replica of this.list()) {
      if (replica.self || replica.stale) continue
      for (const addr of replica.addrs) if (!addrs.includes(addr)) addrs.push(addr)
    }
    return addrs
  }
}

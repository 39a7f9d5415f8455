/**
 * Commands across replicas. Several replicas of one node share the data plane; a station's
 * WebSocket is held by one of them, and a control command (`oe.ctl.…`, one shared durable
 * consumer per selector) is taken by any one of them. So:
 * - the replica holding a station's socket claims it in the plugin's KV
 *   (`socket.<station>` → `{ replica, until }`), renewed while connected, gone when it leaves
 *   (or after the TTL when that replica died);
 * - a replica that takes a command for a station it does not hold looks the holder up and
 *   forwards the command to it over the data plane, on a control subject only that replica
 *   consumes (`oe.ctl.station.<station>.ocpp-fwd-<replica>`); the holder calls the station and
 *   publishes the result. Only when no replica holds the station is the answer "offline".
 *
 * A replica's id is kept in its data folder (`replica-id`), so its forwarding consumer is the
 * same after a restart.
 */
import { randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger, ResourceKind } from '../../data-plane/index.ts'
import type { ControlMessage, PluginDataPlane } from '../api.ts'
import { defined } from './codec.ts'
import { keyToken, type StateStore } from './state.ts'

/** Commands forwarded to a replica are `ocpp-fwd-<replica id>`. */
export const FORWARD_PREFIX = 'ocpp-fwd-'
/** A forwarded command goes on at most this many times (the station moved meanwhile). */
export const MAX_HOPS = 3
const REPLICA_ID = /^[a-z0-9]{6,32}$/
/** Claims renewed at once. */
const RENEW_CHUNK = 64

export interface StationRouterInit {
  /** This replica's id. */
  replica: string
  /** How long a claim lasts without renewal. */
  ttlMs?: number
  /** How long a forwarded command stays worth doing. */
  forwardTtlMs?: number
}

export interface StationRouterComponents {
  store: StateStore
  dataPlane: PluginDataPlane
  logger: Logger
  /**
   * Another replica claimed a station this one holds (it reconnected there while its old
   * socket here looked alive): close the old socket.
   */
  onSuperseded?(station: string, by: string): void
}

/** A command on its way to the replica that holds the station. */
export interface ForwardedCommand {
  kind: ResourceKind
  rid: string
  command: string
  payload: Record<string, unknown>
  agreement?: string
  from?: string
  /** The replica that took it from the data plane. */
  via: string
  hops: number
  /** Epoch ms after which it is dropped (the requester has given up). */
  expires: number
}

interface Claim {
  replica: string
  until: number
}

const encode = (value: unknown) => new TextEncoder().encode(JSON.stringify(value))
const claimKey = (station: string) => `socket.${keyToken(station)}`

/** This replica's id: read from `<dir>/replica-id`, made on first start. */
export async function replicaId(dir: string): Promise<string> {
  const path = join(dir, 'replica-id')
  try {
    const id = (await readFile(path, 'utf8')).trim()
    if (REPLICA_ID.test(id)) return id
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error
  }
  const id = randomBytes(6).toString('hex')
  await writeFile(path, `${id}\n`, { mode: 0o600 })
  return id
}

export class StationRouter {
  readonly replica: string
  /** The control command this replica consumes: commands forwarded to it. */
  readonly command: string
  private readonly ttlMs: number
  private readonly forwardTtlMs: number
  private readonly held = new Set<string>()
  private timer: ReturnType<typeof setInterval> | undefined
  private renewing = false

  constructor(
    init: StationRouterInit,
    private readonly components: StationRouterComponents,
  ) {
    this.replica = init.replica
    this.command = `${FORWARD_PREFIX}${init.replica}`
    this.ttlMs = init.ttlMs ?? 30_000
    this.forwardTtlMs = init.forwardTtlMs ?? 60_000
  }

  start(): void {
    if (this.timer) return
    this.timer = setInterval(() => void this.renew(), Math.max(1_000, this.ttlMs / 3))
    this.timer.unref?.()
  }

  /** Stop renewing and give up the claims (another replica takes the stations over). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    this.timer = undefined
    const stations = [...this.held]
    this.held.clear()
    // Best effort, bounded: the data plane may be going away too (the claims expire anyway).
    await Promise.race([
      Promise.all(stations.map((station) => this.drop(station))).catch(() => {}),
      new Promise((resolve) => setTimeout(resolve, 1_000).unref?.()),
    ])
  }

  /** This replica holds the station's socket now. */
  async claim(station: string): Promise<void> {
    this.held.add(station)
    await this.write(station)
  }

  /**
   * The station's socket here closed: give up the claim unless another replica claimed it
   * meanwhile. Resolves with that other replica, if any.
   */
  async release(station: string): Promise<string | undefined> {
    this.held.delete(station)
    const claim = await this.read(station)
    if (claim && claim.replica !== this.replica && claim.until > Date.now()) return claim.replica
    if (claim?.replica === this.replica) await this.components.store.delete(claimKey(station))
    return undefined
  }

  /** The replica holding the station's socket now, if any. */
  async holder(station: string): Promise<string | undefined> {
    if (this.held.has(station)) return this.replica
    const claim = await this.read(station)
    return claim && claim.until > Date.now() ? claim.replica : undefined
  }

  /** Hand a command to the replica holding its station. */
  async forward(replica: string, station: string, message: ControlMessage, hops: number): Promise<void> {
    const publish = this.components.dataPlane.publishControl
    if (!publish) throw new Error('the data plane cannot publish control commands')
    const forwarded: ForwardedCommand = defined({
      kind: message.kind,
      rid: message.rid,
      command: message.command,
      payload: message.payload,
      agreement: message.agreement,
      from: message.from,
      via: this.replica,
      hops,
      expires: Date.now() + this.forwardTtlMs,
    })
    await publish('station', station, `${FORWARD_PREFIX}${replica}`, { ...forwarded })
    this.components.logger.debug(
      { station, command: message.command, to: replica, hops },
      'command forwarded to the replica holding the station',
    )
  }

  /** A forwarded command as received, or why it is not one. */
  parse(message: ControlMessage): ForwardedCommand | string {
    const value = message.payload as Partial<ForwardedCommand>
    if (
      typeof value.kind !== 'string' ||
      typeof value.rid !== 'string' ||
      typeof value.command !== 'string' ||
      value.payload === null ||
      typeof value.payload !== 'object' ||
      typeof value.hops !== 'number' ||
      typeof value.expires !== 'number'
    )
      return 'not a forwarded command'
    if (value.expires < Date.now()) return 'expired'
    return value as ForwardedCommand
  }

  private async read(station: string): Promise<Claim | undefined> {
    const value = await this.components.store.get(claimKey(station))
    if (!value) return undefined
    try {
      const claim = JSON.parse(new TextDecoder().decode(value)) as Claim
      return typeof claim.replica === 'string' && typeof claim.until === 'number' ? claim : undefined
    } catch {
      return undefined
    }
  }

  private async write(station: string): Promise<void> {
    await this.components.store.put(
      claimKey(station),
      encode({ replica: this.replica, until: Date.now() + this.ttlMs }),
    )
  }

  private async drop(station: string): Promise<void> {
    const claim = await this.read(station)
    if (claim?.replica === this.replica) await this.components.store.delete(claimKey(station))
  }

  private async renew(): Promise<void> {
    // One round at a time; stations in parallel chunks (thousands of stations per replica).
    if (this.renewing) return
    this.renewing = true
    try {
      const stations = [...this.held]
      for (let i = 0; i < stations.length; i += RENEW_CHUNK) {
        await Promise.all(stations.slice(i, i + RENEW_CHUNK).map((station) => this.renewOne(station)))
      }
    } finally {
      this.renewing = false
    }
  }

  private async renewOne(station: string): Promise<void> {
    try {
      const claim = await this.read(station)
      if (!this.held.has(station)) return
      if (claim && claim.replica !== this.replica && claim.until > Date.now()) {
        this.held.delete(station)
        this.components.onSuperseded?.(station, claim.replica)
        return
      }
      await this.write(station)
    } catch (error) {
      this.components.logger.warn({ station, err: (error as Error).message }, 'station claim not renewed')
    }
  }
}

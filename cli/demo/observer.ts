/**
 * What the demo watches on the organisations' data planes, as a local NATS client of each node
 * (URL from `/v1/status`, credentials from `<data-dir>/nats/auth.json`): control commands Gridco
 * sends and their outcome on both sides, the standing data Gridco receives (which must hold only
 * granted attributes), and the charger power Gridco sees. It also sends `limit_power` the way
 * any application at Gridco would: by publishing on `oe.send.<alias>.ctl.…`.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Msg, NatsConnection } from '@nats-io/nats-core'
import { connect } from '@nats-io/transport-node'
import { decodeCbor, encodeCbor } from '../../data-plane/index.ts'
import type { DemoNode } from './org-node.ts'

/** A local NATS connection to a demo node's embedded nats-server. */
export async function connectTo(node: DemoNode): Promise<NatsConnection> {
  const status = await node.client.getJson<{ nats: { url: string } }>('/v1/status')
  const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8')) as {
    user: string
    password: string
  }
  return connect({
    servers: status.nats.url,
    user: auth.user,
    pass: auth.password,
    name: `oe-node demo (${node.org})`,
    // The demo ends when a node goes; there is nothing to reconnect to.
    reconnect: false,
  })
}

export interface ControlCounts {
  sent: number
  acknowledged: number
}

function decoded(msg: Msg): Record<string, unknown> | undefined {
  try {
    const value = decodeCbor(msg.data)
    return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : undefined
  } catch {
    return undefined
  }
}

/** `oe.<…>.<kind>.<rid>.<last>`: the rid is the token before the last. */
const ridOf = (subject: string): string => {
  const tokens = subject.split('.')
  return tokens[tokens.length - 2] ?? ''
}

export class DemoObserver {
  private readonly connections: NatsConnection[] = []
  private consumer: NatsConnection | undefined
  private sentCount = 0
  /** control_result ok:true seen at the consumer (Gridco), per rid. */
  private readonly controlOk = new Map<string, number>()
  /** limit_result Accepted published by the provider (ChargeCo), per rid. */
  private readonly limitAccepted = new Map<string, number>()
  /** Last power reading of each charger as Gridco received it. */
  private readonly seenPower = new Map<string, number>()
  private violations = 0
  private standingChecked = 0

  constructor(
    /** Granted standing attributes per provider alias on Gridco. */
    private readonly allowedAttrs: () => Map<string, Set<string>>,
  ) {}

  /** Watch Gridco (the consumer): commands it sends, their results, what it receives. */
  watchConsumer(nc: NatsConnection): void {
    this.connections.push(nc)
    this.consumer = nc
    nc.subscribe('oe.send.*.ctl.>', {
      callback: (error) => {
        if (!error) this.sentCount += 1
      },
    })
    nc.subscribe('oe.peer.*.evt.*.*.control_result', {
      callback: (error, msg) => {
        if (error) return
        if (decoded(msg)?.ok === true) bump(this.controlOk, ridOf(msg.subject))
      },
    })
    nc.subscribe('oe.peer.*.std.>', {
      callback: (error, msg) => {
        if (!error) this.checkProjection(msg)
      },
    })
    nc.subscribe('oe.peer.*.tel.evse.*.power', {
      callback: (error, msg) => {
        if (error) return
        const value = decoded(msg)?.v
        if (typeof value === 'number') this.seenPower.set(ridOf(msg.subject), value)
      },
    })
  }

  /** Watch ChargeCo (the provider of the control grant): what its chargers answered. */
  watchProvider(nc: NatsConnection): void {
    this.connections.push(nc)
    nc.subscribe('oe.evt.*.*.limit_result', {
      callback: (error, msg) => {
        if (error) return
        const event = decoded(msg)
        // A limit sent again after a reconnect is not a new acknowledgement.
        if (event?.status === 'Accepted' && event.resent !== true)
          bump(this.limitAccepted, ridOf(msg.subject))
      },
    })
  }

  /** Standing data on `oe.peer.<alias>.std.<kind>.<rid>` may hold only the granted attributes. */
  private checkProjection(msg: Msg): void {
    this.standingChecked += 1
    const alias = msg.subject.split('.')[2] ?? ''
    const allowed = this.allowedAttrs().get(alias) ?? new Set<string>()
    const resource = decoded(msg)
    if (!resource) {
      this.violations += 1
      return
    }
    const attrs = resource.attrs
    const extraField =
      (resource.site !== undefined && !allowed.has('site')) ||
      (resource.name !== undefined && !allowed.has('name'))
    const extraAttr =
      typeof attrs === 'object' && attrs !== null && Object.keys(attrs).some((name) => !allowed.has(name))
    if (extraField || extraAttr) this.violations += 1
  }

  /** Publish `limit_power` for a peer's resource on Gridco's `oe.send.<alias>.ctl.…`. */
  async sendLimit(
    alias: string,
    kind: string,
    rid: string,
    watts: number,
    validForMs: number,
  ): Promise<void> {
    const nc = this.consumer
    if (!nc) throw new Error('not connected to the consumer node')
    nc.publish(
      `oe.send.${alias}.ctl.${kind}.${rid}.limit_power`,
      encodeCbor({ v: watts, u: 'W', until: Date.now() + validForMs, source: 'demo' }),
    )
    await nc.flush()
  }

  controls(): ControlCounts {
    let acknowledged = 0
    for (const [rid, ok] of this.controlOk) acknowledged += Math.min(ok, this.limitAccepted.get(rid) ?? 0)
    return { sent: this.sentCount, acknowledged }
  }

  projection(): { checked: number; violations: number } {
    return { checked: this.standingChecked, violations: this.violations }
  }

  powerSeen(rid: string): number | undefined {
    return this.seenPower.get(rid)
  }

  async close(): Promise<void> {
    await Promise.all(this.connections.map((nc) => nc.close().catch(() => {})))
    this.connections.length = 0
  }
}

function bump(map: Map<string, number>, key: string): void {
  map.set(key, (map.get(key) ?? 0) + 1)
}

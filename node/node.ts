/**
 * The composition root: assembles the data dir, identity, data plane (embedded or external
 * NATS) and HTTP API in start order, stops them in reverse, and reports health and status.
 */

import { randomBytes } from 'node:crypto'
import { readFile, rm, writeFile } from 'node:fs/promises'
import { networkInterfaces } from 'node:os'
import { join } from 'node:path'
import type { NatsConnection } from '@nats-io/nats-core'
import {
  connectDataPlane,
  DataPlane,
  defaultReplicas,
  EmbeddedNatsServer,
  type LeaseInfo,
  LeaseManager,
  MqttAuthCallout,
  type RetentionLimits,
  redactUrl,
} from '../data-plane/index.ts'
import {
  type AgreementSummary,
  AuditLog,
  Federation,
  type PeerView,
  ReplicaDirectory,
  type ReplicaView,
} from '../federation/index.ts'
import {
  builtinPlugins,
  PluginConfigError,
  PluginHost,
  type PluginHostMqtt,
  type PluginNeeds,
  type PluginStatus,
  validatePluginConfig,
} from '../plugins/index.ts'
import { createCard, type NodeCard } from './card.ts'
import type { NodeConfig } from './config.ts'
import { DataDirLock, type DataDirPaths, dataDirPaths, writeApiFile } from './data-dir.ts'
import { ConfigError } from './errors.ts'
import { type HealthReport, HttpApi } from './http-api.ts'
import type { NodeIdentity } from './identity.ts'
import { defaultOrgName, initDataDir } from './init.ts'
import type { Logger } from './logger.ts'
import {
  createMetrics,
  type NodeMetrics,
  registerFederationMetrics,
  registerReplicaMetrics,
} from './metrics.ts'

export const NODE_VERSION = '0.1.0'

export interface OeNodeInit {
  dataDir: string
  config: NodeConfig
}

export interface OeNodeComponents {
  logger: Logger
}

/** What `GET /v1/status` and `oe-node status --json` report. */
export interface NodeStatus {
  org: string
  peerId: string
  version: string
  uptimeS: number
  dataDir: string
  api: string
  /** Configured libp2p listen addresses. */
  listen: string[]
  /** Addresses libp2p actually listens on (ports resolved), with /p2p/<peer id>. */
  addrs: string[]
  nats: {
    url: string
    connected: boolean
    embedded: boolean
    serverVersion?: string
    restarts?: number
    /** Copies of each stream and KV bucket this node creates. */
    replicas: number
  }
  /** This process among the replicas of the organisation's node. */
  replica: { id: string }
  /** Every replica of this node that announced itself (this one first). */
  replicas: ReplicaView[]
  /** Single-owner work: who holds each lease, and since when. */
  leases: LeaseInfo[]
  peers: PeerView[]
  agreements: AgreementSummary[]
  plugins: PluginStatus[]
}

type NodeState = 'stopped' | 'starting' | 'running' | 'stopping'

export class OeNode {
  readonly paths: DataDirPaths
  readonly metrics: NodeMetrics
  private state: NodeState = 'stopped'
  private readonly lock: DataDirLock
  private identityValue: NodeIdentity | undefined
  private embedded: EmbeddedNatsServer | undefined
  private connection: NatsConnection | undefined
  private dataPlaneValue: DataPlane | undefined
  private api: HttpApi | undefined
  private auditLog: AuditLog | undefined
  private federationValue: Federation | undefined
  private pluginHost: PluginHost | undefined
  private leaseManager: LeaseManager | undefined
  private replicaDirectory: ReplicaDirectory | undefined
  private replicaIdValue = ''
  private replicasValue = 1
  private startedAt = 0
  private ready = false
  private jetStreamProbe: { at: number; ok: boolean; detail?: string } = { at: 0, ok: false }
  private readonly stopSteps: (() => Promise<void>)[] = []

  constructor(
    private readonly init: OeNodeInit,
    private readonly components: OeNodeComponents,
  ) {
    this.paths = dataDirPaths(init.dataDir)
    this.lock = new DataDirLock(this.paths)
    this.metrics = createMetrics()
    registerFederationMetrics(this.metrics.registry, () =>
      this.federationValue?.started ? this.federationValue : undefined,
    )
    registerReplicaMetrics(this.metrics.registry, () => {
      const leases = this.leaseManager
      const directory = this.replicaDirectory
      if (!leases) return undefined
      return {
        replicaId: this.replicaIdValue,
        liveReplicas: () => directory?.list().filter((replica) => !replica.stale).length ?? 1,
        ownedLeases: () =>
          leases
            .list()
            .filter((lease) => lease.mine)
            .map((lease) => lease.name),
      }
    })
  }

  get org(): string {
    return this.init.config.org ?? defaultOrgName()
  }

  get identity(): NodeIdentity {
    if (!this.identityValue) throw new Error('the node has not been started')
    return this.identityValue
  }

  get dataPlane(): DataPlane | undefined {
    return this.dataPlaneValue
  }

  get federation(): Federation | undefined {
    return this.federationValue
  }

  get audit(): AuditLog | undefined {
    return this.auditLog
  }

  get apiUrl(): string {
    return this.api?.url ?? ''
  }

  /** The URL local clients use for NATS (without credentials). */
  get natsUrl(): string {
    if (this.embedded) return this.embedded.url
    return redactUrl(this.init.config.nats.url ?? '')
  }

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.state !== 'stopped') return
    this.state = 'starting'
    const { config } = this.init
    const log = this.components.logger
    try {
      // Plugin config is part of the config: a bad slice stops the start before anything runs.
      let mqttNeed: PluginNeeds['mqtt']
      try {
        for (const { definition, config: slice } of validatePluginConfig(config.plugins, builtinPlugins)) {
          const needs = definition.needs?.(slice)
          if (needs?.mqtt && !mqttNeed) mqttNeed = needs.mqtt
          else if (needs?.mqtt && needs.mqtt.listen !== mqttNeed?.listen)
            log.warn(
              { plugin: definition.id, listen: needs.mqtt.listen, using: mqttNeed?.listen },
              'one MQTT listener per node: this plugin shares the first one',
            )
        }
      } catch (error) {
        if (error instanceof PluginConfigError) throw new ConfigError(error.issues)
        throw error
      }
      await this.lock.acquire()
      this.stopSteps.push(() => this.lock.release())
      const { identity, adminToken } = await initDataDir(this.paths, this.org)
      this.identityValue = identity
      options.signal?.throwIfAborted()

      if (config.nats.url) {
        this.connection = await connectDataPlane(
          { servers: config.nats.url, credsFile: config.nats.creds, name: `oe-node ${this.org}` },
          options,
        )
        log.info(
          { nats: redactUrl(config.nats.url), version: this.connection.info?.version },
          'connected to external NATS',
        )
      } else {
        const embedded = new EmbeddedNatsServer(
          {
            dir: this.paths.nats,
            port: config.nats.port,
            executable: config.nats.server_bin,
            maxMemoryStore: config.nats.max_memory_store,
            maxFileStore: config.nats.max_file_store,
            ...(mqttNeed ? { mqtt: mqttNeed } : {}),
          },
          {
            logger: log.child({ component: 'nats-server' }),
            onRestart: () => this.metrics.natsServerRestarts.inc(),
          },
        )
        this.embedded = embedded
        await embedded.start(options)
        this.stopSteps.push(() => embedded.stop())
        this.connection = await connectDataPlane(
          {
            servers: embedded.url,
            user: embedded.credentials.user,
            password: embedded.credentials.password,
            name: `oe-node ${this.org}`,
          },
          options,
        )
      }
      const connection = this.connection
      this.stopSteps.push(async () => {
        await connection.drain().catch(() => connection.close())
      })

      // Copies of each stream and bucket: as configured, else 1 on the embedded server and 3 on
      // a cluster of 3 servers or more.
      const replicas = config.nats.replicas ?? (this.embedded ? 1 : defaultReplicas(connection.info))
      this.replicasValue = replicas
      const dataPlane = new DataPlane(
        { limits: retentionLimits(config), replicas },
        { connection, logger: log.child({ component: 'data-plane' }) },
      )
      await dataPlane.start(options)
      this.dataPlaneValue = dataPlane
      this.stopSteps.push(() => dataPlane.stop())

      // This process among the organisation's replicas, and the leases they share.
      this.replicaIdValue = config.node.replica_id ?? (await replicaIdOf(this.paths.root))
      const leases = new LeaseManager(
        { replicaId: this.replicaIdValue, termMs: config.node.lease_term, renewMs: config.node.lease_renew },
        {
          kv: await LeaseManager.openBucket(dataPlane.jetstream, { replicas }),
          logger: log.child({ component: 'leases' }),
        },
      )
      await leases.start()
      this.leaseManager = leases
      this.stopSteps.push(() => leases.stop())
      log.info({ replica: this.replicaIdValue, replicas }, 'replica of this node')

      const signer = {
        publicKey: identity.publicKey,
        sign: identity.sign,
        privateKeySeed: identity.privateKeySeed,
        privateKeyObject: identity.privateKeyObject,
      }
      const audit = new AuditLog(
        { dir: this.paths.audit },
        { signer, logger: log.child({ component: 'audit' }) },
      )
      await audit.start()
      this.auditLog = audit
      this.stopSteps.push(() => audit.stop())

      const federation = new Federation(
        {
          org: this.org,
          listen: config.federation.listen,
          transfer: {
            maxBatchRecords: config.federation.batch_records,
            batchWaitMs: config.federation.batch_wait,
            credit: config.federation.credit,
          },
        },
        { dataPlane, signer, logger: log.child({ component: 'federation' }), audit, leases },
      )
      await federation.start()
      this.federationValue = federation
      this.stopSteps.push(() => federation.stop())

      // MQTT clients of plugins are decided by the node's callout service on the embedded server.
      let mqtt: PluginHostMqtt | undefined
      const embeddedMqtt = this.embedded?.mqtt
      if (embeddedMqtt) {
        const callout = new MqttAuthCallout(
          { issuer: embeddedMqtt.issuer },
          { connection, logger: log.child({ component: 'mqtt-auth' }) },
        )
        await callout.start()
        this.stopSteps.push(() => callout.stop())
        mqtt = { url: embeddedMqtt.url, callout }
      } else if (mqttNeed) {
        mqtt = {
          unavailable:
            'the node uses an external NATS (--nats-url): enable MQTT on that cluster (mqtt { listen }, with its own authorization)',
        }
      }
      const plugins = new PluginHost(
        { config: config.plugins, dir: this.paths.plugins },
        {
          dataPlane,
          logger: log.child({ component: 'plugins' }),
          registry: this.metrics.registry,
          definitions: builtinPlugins,
          leases,
          ...(mqtt ? { mqtt } : {}),
        },
      )
      this.pluginHost = plugins
      this.stopSteps.push(() => plugins.stop())
      await plugins.start(options)

      const api = new HttpApi(
        {
          listen: config.api.listen,
          maxBodyBytes: config.api.max_body_bytes,
          maxRecords: config.api.max_records,
          allowedHosts: config.api.allowed_hosts,
          adminToken,
          ingestTokens: config.api.ingest_tokens,
        },
        {
          logger: log.child({ component: 'api' }),
          metrics: this.metrics,
          dataPlane: () => this.dataPlaneValue,
          federation: () => this.federationValue,
          audit: () => this.auditLog,
          plugins: () => this.pluginHost,
          health: () => this.health(),
          status: () => this.status(),
          card: () => this.card(),
        },
      )
      await api.start()
      this.api = api
      this.stopSteps.push(async () => {
        await rm(this.paths.api, { force: true })
        await api.stop()
      })
      await writeApiFile(this.paths, api.url)

      // Announced once the API and libp2p listen: the card of any replica lists them all.
      const directory = new ReplicaDirectory(
        { replicaId: this.replicaIdValue },
        {
          kv: await ReplicaDirectory.openBucket(dataPlane.jetstream, { replicas }),
          logger: log.child({ component: 'replicas' }),
          describe: () => ({
            addrs: this.federationValue?.addresses() ?? [],
            api: this.apiUrl,
            version: NODE_VERSION,
          }),
        },
      )
      await directory.start()
      this.replicaDirectory = directory
      this.stopSteps.push(() => directory.stop())

      this.startedAt = Date.now()
      this.ready = true
      this.state = 'running'
      log.info({ org: this.org, peerId: identity.peerId, api: api.url, nats: this.natsUrl }, 'node ready')
    } catch (error) {
      await this.runStopSteps()
      this.state = 'stopped'
      throw error
    }
  }

  /** Graceful stop: readiness goes 503 first, then parts stop in reverse start order. */
  async stop(): Promise<void> {
    if (this.state === 'stopped' || this.state === 'stopping') return
    this.state = 'stopping'
    this.ready = false
    this.metrics.ready.set(0)
    this.components.logger.info({}, 'node stopping')
    await this.runStopSteps()
    this.state = 'stopped'
    this.components.logger.info({}, 'node stopped')
  }

  /** For a forced exit (second signal): end child processes without waiting. */
  kill(): void {
    this.embedded?.kill()
  }

  private async runStopSteps(): Promise<void> {
    while (this.stopSteps.length > 0) {
      const step = this.stopSteps.pop()!
      try {
        await step()
      } catch (error) {
        this.components.logger.warn({ err: (error as Error).message }, 'error while stopping')
      }
    }
  }

  async health(): Promise<HealthReport> {
    const connected = this.dataPlaneValue?.isConnected() ?? false
    this.metrics.natsConnected.set(connected ? 1 : 0)
    const checks: HealthReport['checks'] = {
      node: { ok: this.ready, ...(this.ready ? {} : { detail: this.state }) },
      nats: { ok: connected, ...(connected ? {} : { detail: 'not connected' }) },
      jetstream: await this.probeJetStream(connected),
      plugins: {
        ok: this.pluginHost?.ready() ?? false,
        ...(this.pluginHost?.ready() ? {} : { detail: 'not ready' }),
      },
      libp2p: {
        ok: this.federationValue?.started ?? false,
        ...(this.federationValue?.started ? {} : { detail: 'not listening' }),
      },
    }
    if (this.embedded) {
      const state = this.embedded.state
      checks['nats-server'] = {
        ok: state.status === 'running',
        ...(state.status === 'running' ? {} : { detail: state.status }),
      }
    }
    const ready = Object.values(checks).every((check) => check.ok)
    this.metrics.ready.set(ready ? 1 : 0)
    return { ready, checks }
  }

  /** JetStream answers its API (checked at most once a second; a stream store may be recovering). */
  private async probeJetStream(connected: boolean): Promise<{ ok: boolean; detail?: string }> {
    if (!connected || !this.connection) return { ok: false, detail: 'not connected' }
    if (Date.now() - this.jetStreamProbe.at < 1_000) return this.jetStreamProbe
    let result: { ok: boolean; detail?: string }
    try {
      const reply = await this.connection.request('$JS.API.INFO', undefined, { timeout: 1_000 })
      const info = reply.json<{ error?: { description?: string } }>()
      result = info.error ? { ok: false, detail: info.error.description ?? 'error' } : { ok: true }
    } catch (error) {
      result = { ok: false, detail: (error as Error).message }
    }
    this.jetStreamProbe = { at: Date.now(), ...result }
    return result
  }

  card(): { card: NodeCard; text: string } {
    const own = this.federationValue?.addresses() ?? advertisedAddrs(this.init.config.federation.listen)
    // Partners peer with the organisation: every live replica's addresses, this one's first.
    const addrs = this.replicaDirectory?.addresses(own) ?? own
    return createCard(this.identity, this.org, addrs)
  }

  /** The leases of this node's replicas (for plugins and status). */
  get leases(): LeaseManager | undefined {
    return this.leaseManager
  }

  async status(): Promise<NodeStatus> {
    const connection = this.connection
    return {
      org: this.org,
      peerId: this.identity.peerId,
      version: NODE_VERSION,
      uptimeS: this.startedAt ? Math.floor((Date.now() - this.startedAt) / 1000) : 0,
      dataDir: this.paths.root,
      api: this.apiUrl,
      listen: this.init.config.federation.listen,
      addrs: this.federationValue?.addresses() ?? [],
      nats: {
        url: this.natsUrl,
        connected: this.dataPlaneValue?.isConnected() ?? false,
        embedded: this.embedded !== undefined,
        ...(connection?.info?.version ? { serverVersion: connection.info.version } : {}),
        ...(this.embedded ? { restarts: this.embedded.restarts } : {}),
        replicas: this.replicasValue,
      },
      replica: { id: this.replicaIdValue },
      replicas: this.replicaDirectory?.list() ?? [],
      leases: this.leaseManager?.list() ?? [],
      peers: this.federationValue?.peers() ?? [],
      agreements: this.federationValue?.list() ?? [],
      plugins: this.pluginHost?.status() ?? [],
    }
  }
}

/** Addresses to advertise: listen addresses with unspecified hosts replaced by this host's. */
export function advertisedAddrs(listen: readonly string[]): string[] {
  const addrs: string[] = []
  const ipv4 = Object.values(networkInterfaces())
    .flat()
    .filter((nic) => nic && nic.family === 'IPv4' && !nic.internal)
    .map((nic) => nic!.address)
  for (const addr of listen) {
    if (addr.startsWith('/ip4/0.0.0.0/')) {
      const rest = addr.slice('/ip4/0.0.0.0'.length)
      for (const ip of ipv4.length > 0 ? ipv4 : ['127.0.0.1']) addrs.push(`/ip4/${ip}${rest}`)
    } else addrs.push(addr)
  }
  return addrs
}

export function retentionLimits(config: NodeConfig): RetentionLimits {
  const { streams } = config
  const limits = (entry: { max_age: number; max_bytes: number }) => ({
    maxAgeMs: entry.max_age,
    maxBytes: entry.max_bytes,
  })
  return {
    OE_TEL: limits(streams.telemetry),
    OE_EVT: limits(streams.events),
    OE_CTL: limits(streams.control),
    OE_STD: limits(streams.standing),
    OE_PEER: limits(streams.peer),
    OE_OUT: limits(streams.outbox),
  }
}

/**
 * This replica's id: kept in `<data-dir>/replica-id`, made at the first start. Copying a data
 * dir copies it too; set `node.replica_id` on each replica then.
 */
async function replicaIdOf(dataDir: string): Promise<string> {
  const file = join(dataDir, 'replica-id')
  const kept = (await readFile(file, 'utf8').catch(() => '')).trim()
  if (/^[A-Za-z0-9_-]{1,64}$/.test(kept)) return kept
  const id = `r-${randomBytes(6).toString('hex')}`
  await writeFile(file, `${id}\n`, { mode: 0o600 })
  return id
}

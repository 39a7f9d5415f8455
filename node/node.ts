/**
 * The composition root: assembles the data dir, identity, data plane (embedded or external
 * NATS) and HTTP API in start order, stops them in reverse, and reports health and status. It
 * also rotates the node key (`rotateKey`): the succession statement goes to every peer over the
 * connections of the old key, the audit log is handed to the new key, the key file is replaced
 * (the old one kept as `keys/node.key.<time>.retired`), and the libp2p host restarts with the
 * new identity on the same ports.
 */

import { randomBytes } from 'node:crypto'
import { readFile, rm, stat, writeFile } from 'node:fs/promises'
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
  type AuditSigner,
  base64url,
  DEFAULT_GRACE_MS,
  Federation,
  type FederationSigner,
  type KeySuccession,
  MAX_GRACE_MS,
  type NoiseCrypto,
  noiseCrypto,
  type PeerView,
  ReplicaDirectory,
  type ReplicaView,
  readOwnSuccessions,
  signSuccession,
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
import { ConfigError, KeyRetiredError, KeyRotationError } from './errors.ts'
import { type HealthReport, HttpApi } from './http-api.ts'
import {
  createSuccessorKey,
  findRetiredIdentity,
  loadIdentity,
  type NodeIdentity,
  nextKeyPath,
  promoteSuccessorKey,
  retiredKeyPath,
} from './identity.ts'
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
  /** What seals Noise frames: `openssl (libcrypto.so.3)` or `wasm` (`federation.noise_crypto`). */
  noiseCrypto?: string
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

/** What `POST /v1/key/rotate` and `oe-node key rotate --json` report (no key material). */
export interface KeyRotationResult {
  org: string
  from: { peerId: string; publicKey: string }
  to: { peerId: string; publicKey: string }
  /** ISO 8601: the new key is in force from then on. */
  at: string
  /** ISO 8601: partners refuse the old key from then on. */
  oldKeyAcceptedUntil: string
  graceSeconds: number
  /** Where the old key is kept (0600) until every peer has the statement. */
  retiredKeyFile: string
  /** Peers that acknowledged the succession statement before the switch. */
  notified: string[]
  /** Peers that have not yet (not connected): told when next reachable, by a courier. */
  pending: string[]
}

/** The signer parts of an identity, as federation and audit use them. */
const signerOf = (identity: NodeIdentity): FederationSigner & AuditSigner => ({
  publicKey: identity.publicKey,
  sign: identity.sign,
  privateKeySeed: identity.privateKeySeed,
  privateKeyObject: identity.privateKeyObject,
})

/** How long a rotation waits for connected peers to acknowledge the statement before it switches. */
const SUCCESSION_DELIVERY_MS = 10_000

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
  private noise: NoiseCrypto | undefined
  private pluginHost: PluginHost | undefined
  private leaseManager: LeaseManager | undefined
  private replicaDirectory: ReplicaDirectory | undefined
  private replicaIdValue = ''
  private replicasValue = 1
  private startedAt = 0
  private ready = false
  private jetStreamProbe: { at: number; ok: boolean; detail?: string } = { at: 0, ok: false }
  private readonly stopSteps: (() => Promise<void>)[] = []
  private rotating = false

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
      const { identity: stored, adminToken } = await initDataDir(this.paths, this.org)
      this.identityValue = stored
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

      // Key rotation: finish one a stop interrupted, and refuse a key a rotation retired.
      const successions = await readOwnSuccessions(dataPlane.jetstream, { replicas })
      const interrupted = await this.finishInterruptedRotation(successions)
      const identity = this.identity
      const ownKey = base64url(identity.publicKey)
      const succeeded = successions.find((statement) => statement.from === ownKey)
      if (succeeded) {
        throw new KeyRetiredError(
          `${this.paths.key} holds a key that a key rotation retired on ${new Date(succeeded.at).toISOString()} ` +
            `(peer id ${identity.peerId}): copy keys/node.key from the replica that rotated it (0600), then start again`,
        )
      }

      const audit = new AuditLog(
        { dir: this.paths.audit },
        {
          signer: signerOf(interrupted?.previous ?? identity),
          logger: log.child({ component: 'audit' }),
        },
      )
      await audit.start()
      this.auditLog = audit
      this.stopSteps.push(() => audit.stop())
      if (interrupted) {
        if (audit.rotatedTo(ownKey)) audit.continueWithSigner(signerOf(identity))
        else
          await audit.rotateSigner(signerOf(identity), {
            fromPeerId: interrupted.previous.peerId,
            toPeerId: identity.peerId,
            statement: interrupted.statement,
          })
      }

      const federation = this.newFederation(identity, config.federation.listen)
      await federation.start()
      this.federationValue = federation
      this.stopSteps.push(async () => {
        await this.federationValue?.stop()
      })

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
          rotateKey: (rotation) => this.rotateKey(rotation),
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

  private newFederation(identity: NodeIdentity, listen: string[], replacing?: Federation): Federation {
    const { config } = this.init
    const log = this.components.logger
    if (!this.noise) {
      // Throws NoiseCryptoUnavailableError when "openssl" is asked for and cannot be had.
      this.noise = noiseCrypto(config.federation.noise_crypto)
      if (this.noise.fallback)
        log.warn({ reason: this.noise.fallback }, 'Noise uses the WebAssembly ChaCha20-Poly1305 (slower)')
    }
    return new Federation(
      {
        org: this.org,
        listen,
        noiseCrypto: this.noise,
        transfer: {
          maxBatchRecords: config.federation.batch_records,
          batchWaitMs: config.federation.batch_wait,
          credit: config.federation.credit,
        },
      },
      {
        dataPlane: this.dataPlaneValue!,
        signer: signerOf(identity),
        logger: log.child({ component: 'federation' }),
        audit: this.auditLog!,
        leases: this.leaseManager!,
        retiredSigner: async (publicKey) => {
          const retired = await findRetiredIdentity(this.paths.key, publicKey)
          return retired ? signerOf(retired) : undefined
        },
        ...(replacing ? { flows: replacing.flowsByAgreement() } : {}),
      },
    )
  }

  /**
   * A rotation that stopped after it announced the successor key (`keys/node.key.next` is there
   * and this node's successions name it) is finished: the key file is replaced as the rotation
   * would have. A successor never announced is removed: the rotation did not happen.
   */
  private async finishInterruptedRotation(
    successions: KeySuccession[],
  ): Promise<{ previous: NodeIdentity; statement: KeySuccession } | undefined> {
    const nextPath = nextKeyPath(this.paths.key)
    if (
      !(await stat(nextPath).then(
        () => true,
        () => false,
      ))
    )
      return undefined
    const log = this.components.logger
    const current = this.identity
    const next = await loadIdentity(nextPath)
    const statement = successions.find(
      (entry) => entry.from === base64url(current.publicKey) && entry.to === base64url(next.publicKey),
    )
    if (!statement) {
      await rm(nextPath, { force: true })
      log.warn({ file: nextPath }, 'removed the successor key of a key rotation that was never announced')
      return undefined
    }
    await promoteSuccessorKey(this.paths.key, nextPath, retiredKeyPath(this.paths.key, statement.at))
    this.identityValue = next
    log.warn(
      { from: current.peerId, to: next.peerId },
      'finished a key rotation that was interrupted: this node now uses its new key',
    )
    return { previous: current, statement }
  }

  /**
   * Replace the node key (see the file header). Peers that are connected get the succession
   * statement before the switch (waited for up to SUCCESSION_DELIVERY_MS); the others when they
   * are next reachable. Agreements carry on under the new key without a new proposal.
   */
  async rotateKey(options: { graceMs?: number; signal?: AbortSignal } = {}): Promise<KeyRotationResult> {
    const graceMs = options.graceMs ?? DEFAULT_GRACE_MS
    if (!Number.isSafeInteger(graceMs) || graceMs < 0 || graceMs > MAX_GRACE_MS)
      throw new KeyRotationError(`the grace must be from 0 to ${MAX_GRACE_MS / 86_400_000} days`)
    const federation = this.federationValue
    const audit = this.auditLog
    if (this.state !== 'running' || !federation?.started || !audit)
      throw new KeyRotationError(
        'the node is not running: start it, then rotate its key (peers must be told)',
      )
    if (this.rotating) throw new KeyRotationError('a key rotation is under way already')
    this.rotating = true
    const log = this.components.logger
    try {
      const old = this.identity
      const nextPath = nextKeyPath(this.paths.key)
      const next = await createSuccessorKey(nextPath)
      const statement = signSuccession({ org: this.org, from: old, to: next, graceMs })
      // The order makes a stop at any point recoverable (finishInterruptedRotation): announced,
      // then the audit log handed over, then the key file replaced.
      await federation.announceSuccession(statement)
      await audit.rotateSigner(signerOf(next), { fromPeerId: old.peerId, toPeerId: next.peerId, statement })
      const retiredFile = retiredKeyPath(this.paths.key, statement.at)
      await promoteSuccessorKey(this.paths.key, nextPath, retiredFile)
      this.identityValue = next
      log.info({ from: old.peerId, to: next.peerId, graceMs }, 'node key rotated; telling peers')

      const pending = await federation.awaitSuccession(statement, SUCCESSION_DELIVERY_MS)
      const notified = federation
        .peers()
        .map((peer) => peer.alias)
        .filter((alias) => !pending.includes(alias))
      // The libp2p host takes the new identity: same ports, so peers find it where it was.
      const listen = reuseBoundPorts(this.init.config.federation.listen, federation.addresses())
      await federation.stop()
      let restarted = this.newFederation(next, listen, federation)
      try {
        await restarted.start()
      } catch (error) {
        log.warn(
          { err: (error as Error).message },
          'could not listen on the same ports again; using the configured ones',
        )
        await restarted.stop().catch(() => {})
        restarted = this.newFederation(next, this.init.config.federation.listen, federation)
        await restarted.start()
      }
      this.federationValue = restarted
      log.info({ peerId: next.peerId, notified, pending }, 'libp2p restarted with the new key')
      return {
        org: this.org,
        from: { peerId: old.peerId, publicKey: statement.from },
        to: { peerId: next.peerId, publicKey: statement.to },
        at: new Date(statement.at).toISOString(),
        oldKeyAcceptedUntil: new Date(statement.graceUntil).toISOString(),
        graceSeconds: Math.round(graceMs / 1000),
        retiredKeyFile: retiredFile,
        notified,
        pending,
      }
    } finally {
      this.rotating = false
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
      ...(this.federationValue ? { noiseCrypto: this.federationValue.noiseCrypto } : {}),
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

/**
 * Listen addresses for a restart of the libp2p host: those that asked for any port (`/tcp/0`)
 * get the port the host was given, so peers find it where it was.
 */
export function reuseBoundPorts(listen: readonly string[], bound: readonly string[]): string[] {
  // Ports asked for by number are theirs; each `/tcp/0` takes a bound port none other has.
  const taken = new Set(listen.map((addr) => /\/tcp\/(\d+)/.exec(addr)?.[1]).filter((port) => port !== '0'))
  return listen.map((addr) => {
    const match = /^\/(ip4|ip6)\/([^/]+)\/tcp\/0(\/.*)?$/.exec(addr)
    if (!match) return addr
    const [, family, host, rest = ''] = match
    const any = host === '0.0.0.0' || host === '::'
    for (const candidate of bound) {
      const found = /^\/(ip4|ip6)\/([^/]+)\/tcp\/(\d+)/.exec(candidate)
      if (!found || found[1] !== family || (!any && found[2] !== host) || taken.has(found[3])) continue
      taken.add(found[3])
      return `/${family}/${host}/tcp/${found[3]}${rest}`
    }
    return addr
  })
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

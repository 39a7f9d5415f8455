/**
 * Prometheus metrics (prom-client), one registry per node, names `oe_<area>_<thing>_<unit>`.
 * No per-record labels: label values are bounded sets (result, route, status class).
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'

export interface NodeMetrics {
  registry: Registry
  ingestRecords: Counter<'result'>
  ingestBatchSeconds: Histogram
  httpRequests: Counter<'route' | 'status'>
  resourcesUpserted: Counter
  natsConnected: Gauge
  natsServerRestarts: Counter
  ready: Gauge
}

/** What the federation reports for metrics (read at scrape time). */
export interface FederationMetricsSource {
  flowsByAgreement(): ReadonlyMap<
    string,
    {
      recordsIn: number
      recordsOut: number
      bytesIn: number
      bytesOut: number
      lagRecords: number
      drops: Partial<Record<string, number>>
    }
  >
  peers(): { alias: string; state: string; rttMs: number | null }[]
  refusedConnections(): number
}

/** Per-agreement and per-peer gauges, filled from the federation at each scrape. */
export function registerFederationMetrics(
  registry: Registry,
  source: () => FederationMetricsSource | undefined,
): void {
  const agreement = (id: string) => id.slice(0, 16)
  const gauge = (
    name: string,
    help: string,
    labelNames: string[],
    fill: (g: Gauge, f: FederationMetricsSource) => void,
  ) =>
    new Gauge({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset()
        const federation = source()
        if (federation) fill(this as Gauge, federation)
      },
    })
  gauge(
    'oe_federation_records',
    'Records moved under an agreement since start, by direction.',
    ['agreement', 'direction'],
    (g, f) => {
      for (const [id, flow] of f.flowsByAgreement()) {
        g.set({ agreement: agreement(id), direction: 'in' }, flow.recordsIn)
        g.set({ agreement: agreement(id), direction: 'out' }, flow.recordsOut)
      }
    },
  )
  gauge(
    'oe_federation_bytes',
    'Batch bytes moved under an agreement since start, by direction.',
    ['agreement', 'direction'],
    (g, f) => {
      for (const [id, flow] of f.flowsByAgreement()) {
        g.set({ agreement: agreement(id), direction: 'in' }, flow.bytesIn)
        g.set({ agreement: agreement(id), direction: 'out' }, flow.bytesOut)
      }
    },
  )
  gauge(
    'oe_federation_dropped_records',
    'Records dropped under an agreement since start, by reason.',
    ['agreement', 'reason'],
    (g, f) => {
      for (const [id, flow] of f.flowsByAgreement()) {
        for (const [reason, count] of Object.entries(flow.drops))
          g.set({ agreement: agreement(id), reason }, count ?? 0)
      }
    },
  )
  gauge(
    'oe_federation_lag_records',
    'Records sent to the consumer and not yet acknowledged.',
    ['agreement'],
    (g, f) => {
      for (const [id, flow] of f.flowsByAgreement()) g.set({ agreement: agreement(id) }, flow.lagRecords)
    },
  )
  gauge('oe_federation_peer_rtt_seconds', 'Round-trip time to each connected peer.', ['peer'], (g, f) => {
    for (const peer of f.peers()) if (peer.rttMs !== null) g.set({ peer: peer.alias }, peer.rttMs / 1000)
  })
  gauge(
    'oe_federation_connections_refused',
    'Connections the gate refused since start (unknown keys), every attempt.',
    [],
    (g, f) => {
      g.set(f.refusedConnections())
    },
  )
  gauge('oe_federation_peers_connected', 'Peers currently connected.', [], (g, f) => {
    g.set(f.peers().filter((peer) => peer.state === 'connected').length)
  })
}

/** What this replica knows of its node's replicas and leases (read at scrape time). */
export interface ReplicaMetricsSource {
  replicaId: string
  /** Replicas whose membership entry is live, this one included. */
  liveReplicas(): number
  /** The leases this replica holds now. */
  ownedLeases(): string[]
}

/** `oe_replicas` and `oe_lease_owned{lease, replica}` (1 per lease this replica holds). */
export function registerReplicaMetrics(
  registry: Registry,
  source: () => ReplicaMetricsSource | undefined,
): void {
  new Gauge({
    name: 'oe_replicas',
    help: 'Replicas of this node with a live membership entry, as this replica sees them.',
    registers: [registry],
    collect() {
      this.reset()
      const replicas = source()
      if (replicas) this.set(replicas.liveReplicas())
    },
  })
  new Gauge({
    name: 'oe_lease_owned',
    help: 'Leases this replica holds (single-owner work such as an agreement’s outgoing transfer), 1 each.',
    labelNames: ['lease', 'replica'],
    registers: [registry],
    collect() {
      this.reset()
      const replicas = source()
      if (!replicas) return
      for (const lease of replicas.ownedLeases()) this.set({ lease, replica: replicas.replicaId }, 1)
    },
  })
}

export function createMetrics(): NodeMetrics {
  const registry = new Registry()
  try {
    collectDefaultMetrics({ register: registry, prefix: 'oe_' })
  } catch {
    // Some runtime metrics are unavailable on some runtimes; the node's own still work.
  }
  return {
    registry,
    ingestRecords: new Counter({
      name: 'oe_ingest_records_total',
      help: 'Telemetry records received over the HTTP API, by result (accepted, rejected).',
      labelNames: ['result'],
      registers: [registry],
    }),
    ingestBatchSeconds: new Histogram({
      name: 'oe_ingest_batch_seconds',
      help: 'Time from receiving an ingest request to JetStream confirming every accepted record.',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
    httpRequests: new Counter({
      name: 'oe_http_requests_total',
      help: 'HTTP API requests by route and status code.',
      labelNames: ['route', 'status'],
      registers: [registry],
    }),
    resourcesUpserted: new Counter({
      name: 'oe_resources_upserted_total',
      help: 'Standing-data writes accepted.',
      registers: [registry],
    }),
    natsConnected: new Gauge({
      name: 'oe_nats_connected',
      help: '1 while the node is connected to its NATS data plane.',
      registers: [registry],
    }),
    natsServerRestarts: new Counter({
      name: 'oe_nats_server_restarts_total',
      help: 'Times the embedded nats-server died and was restarted.',
      registers: [registry],
    }),
    ready: new Gauge({ name: 'oe_node_ready', help: '1 while /readyz answers 200.', registers: [registry] }),
  }
}

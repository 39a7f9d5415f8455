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

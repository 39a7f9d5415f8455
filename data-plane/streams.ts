/**
 * The JetStream streams and KV bucket of ARCHITECTURE §5, created on start and brought to the
 * configured retention limits when they already exist.
 */
import {
  DiscardPolicy,
  type JetStreamManager,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
} from '@nats-io/jetstream'
import { nanos } from '@nats-io/nats-core'

export const STREAMS = {
  OE_TEL: 'oe.tel.>',
  OE_EVT: 'oe.evt.>',
  OE_CTL: 'oe.ctl.>',
  OE_STD: 'oe.std.>',
  OE_PEER: 'oe.peer.>',
  OE_OUT: 'oe.send.>',
} as const
export type StreamName = keyof typeof STREAMS

export const RESOURCES_BUCKET = 'oe-resources'

export interface StreamLimits {
  /** Oldest message kept, in milliseconds; 0 keeps forever. */
  maxAgeMs: number
  /** Bytes kept; -1 is unlimited. */
  maxBytes: number
}

export type RetentionLimits = Record<StreamName, StreamLimits>

/** The stream that captures a subject or filter, if one of ours does. */
export function streamForSubject(subject: string): StreamName | undefined {
  const [root, area] = subject.split('.')
  if (root !== 'oe') return undefined
  for (const [name, filter] of Object.entries(STREAMS)) {
    if (filter.split('.')[1] === area) return name as StreamName
  }
  return undefined
}

/**
 * How many copies of each stream and bucket to keep when the config does not say: 3 on a NATS
 * cluster of 3 servers or more (the servers it announces in `connect_urls`, itself included),
 * otherwise 1.
 */
export function defaultReplicas(info: { cluster?: string; connect_urls?: string[] } | undefined): number {
  if (!info?.cluster) return 1
  return new Set(info.connect_urls ?? []).size >= 3 ? 3 : 1
}

export async function ensureStreams(
  jsm: JetStreamManager,
  limits: RetentionLimits,
  replicas = 1,
): Promise<void> {
  for (const [name, subject] of Object.entries(STREAMS) as [StreamName, string][]) {
    const wanted: Partial<StreamConfig> & { name: string } = {
      name,
      subjects: [subject],
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      discard: DiscardPolicy.Old,
      max_age: nanos(limits[name].maxAgeMs),
      max_bytes: limits[name].maxBytes,
      num_replicas: replicas,
      // Records published with a message id (an ingest request's Idempotency-Key and index) are
      // stored once within the window: as long as the API promises to honour a repeated key.
      duplicate_window: nanos(10 * 60 * 1000),
    }
    let current: number | undefined
    try {
      current = (await jsm.streams.info(name)).config.num_replicas
    } catch (error) {
      if (!isStreamNotFound(error)) throw error
    }
    if (current !== undefined) {
      const {
        name: _name,
        storage: _storage,
        retention: _retention,
        num_replicas: _replicas,
        ...update
      } = wanted
      // A stream made on one server grows its copies when the node moves onto a cluster.
      await jsm.streams.update(name, current === replicas ? update : { ...update, num_replicas: replicas })
    } else {
      await jsm.streams.add(wanted)
    }
  }
}

function isStreamNotFound(error: unknown): boolean {
  const e = error as { name?: string; code?: number; api_error?: { err_code?: number }; message?: string }
  return (
    e?.name === 'StreamNotFoundError' ||
    e?.api_error?.err_code === 10059 ||
    /stream not found/i.test(e?.message ?? '')
  )
}

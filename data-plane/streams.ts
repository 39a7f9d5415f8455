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

export async function ensureStreams(jsm: JetStreamManager, limits: RetentionLimits): Promise<void> {
  for (const [name, subject] of Object.entries(STREAMS) as [StreamName, string][]) {
    const wanted: Partial<StreamConfig> & { name: string } = {
      name,
      subjects: [subject],
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      discard: DiscardPolicy.Old,
      max_age: nanos(limits[name].maxAgeMs),
      max_bytes: limits[name].maxBytes,
      num_replicas: 1,
      // Records published with a message id (an ingest request's Idempotency-Key and index) are
      // stored once within the window: as long as the API promises to honour a repeated key.
      duplicate_window: nanos(10 * 60 * 1000),
    }
    let exists = true
    try {
      await jsm.streams.info(name)
    } catch (error) {
      if (!isStreamNotFound(error)) throw error
      exists = false
    }
    if (exists) {
      const {
        name: _name,
        storage: _storage,
        retention: _retention,
        num_replicas: _replicas,
        ...update
      } = wanted
      await jsm.streams.update(name, update)
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

/**
 * The plugin host's KV store facade, publishControl and readTelemetry, on a real data plane
 * (embedded nats-server with JetStream): what the OpenADR plugins keep and read. A plugin gets
 * a bucket `oe-plugin-<id>-<name>` with get/put/delete/keys, its values survive a new host on the
 * same server, bad names and keys are refused by name, and plugins do not share buckets.
 */
import { Kvm } from '@nats-io/kv'
import { afterAll, beforeAll, expect, test } from 'vitest'
import * as z from 'zod'
import { type DataPlane, decodeCbor } from '../data-plane/index.ts'
import { createRecordingLogger } from '../plugins/compliance.ts'
import { definePlugin, type PluginContext, PluginHost } from '../plugins/index.ts'
import { startDataPlane, type TestDataPlane } from './helpers/data-plane.ts'
import { cleanupAll } from './helpers/node-process.ts'

let plane: TestDataPlane
let dataPlane: DataPlane
const logger = createRecordingLogger()

beforeAll(async () => {
  plane = await startDataPlane('oe-store-', logger)
  dataPlane = plane.dataPlane
})

afterAll(async () => {
  await plane?.stop()
  await cleanupAll()
})

/** Run a probe plugin in a host and hand its context out. */
async function withPlugin<T>(id: string, work: (ctx: PluginContext<unknown>) => Promise<T>): Promise<T> {
  let context: PluginContext<unknown> | undefined
  const probe = definePlugin({
    id,
    version: '1.0.0',
    description: 'a probe plugin for the store tests',
    configSchema: z.object({}),
    create: (ctx) => {
      context = ctx as PluginContext<unknown>
      return {}
    },
  })
  const host = new PluginHost(
    { config: { [id]: { enabled: true } }, dir: `${plane.dir}/plugins` },
    { dataPlane, logger, registry: new (await import('prom-client')).Registry(), definitions: [probe] },
  )
  await host.start()
  try {
    return await work(context!)
  } finally {
    await host.stop()
  }
}

const text = (value: Uint8Array | undefined) => (value ? new TextDecoder().decode(value) : undefined)
const bytes = (value: string) => new TextEncoder().encode(value)

test('a plugin store: put, get, keys with wildcards, delete; kept across hosts; one bucket per plugin and name', async () => {
  await withPlugin('probe-a', async (ctx) => {
    const store = await ctx.store!('objects')
    expect(store.bucket).toBe('oe-plugin-probe-a-objects')
    await store.put('event.e1', bytes('one'))
    await store.put('event.e2', bytes('two'))
    await store.put('program.p1', bytes('three'))
    expect(text(await store.get('event.e1'))).toBe('one')
    expect((await store.keys('event.*')).sort()).toEqual(['event.e1', 'event.e2'])
    await store.delete('event.e2')
    expect(await store.get('event.e2')).toBeUndefined()
    expect((await store.keys()).sort()).toEqual(['event.e1', 'program.p1'])
    await expect(store.put('bad key', bytes('x'))).rejects.toThrow(/plugin probe-a: store key 'bad key'/)
    await expect(ctx.store!('Bad_Name')).rejects.toThrow(/plugin probe-a: store name/)
  })
  // A new host on the same data plane finds what was stored.
  await withPlugin('probe-a', async (ctx) => {
    const store = await ctx.store!('objects')
    expect(text(await store.get('program.p1'))).toBe('three')
  })
  // Another plugin has its own bucket.
  await withPlugin('probe-b', async (ctx) => {
    const store = await ctx.store!('objects')
    expect(await store.keys()).toEqual([])
  })
  const buckets: string[] = []
  for await (const status of new Kvm(dataPlane.jetstream).list()) buckets.push(status.bucket)
  expect(buckets).toEqual(expect.arrayContaining(['oe-plugin-probe-a-objects', 'oe-plugin-probe-b-objects']))
})

test('publishControl stores a command on oe.ctl; readTelemetry reads one resource from OE_TEL', async () => {
  await withPlugin('probe-c', async (ctx) => {
    const now = Date.now()
    await ctx.dataPlane.publishTelemetry([
      { kind: 'battery', rid: 'b1', q: 'power', v: 1000, t: now - 20_000 },
      { kind: 'battery', rid: 'b1', q: 'soc', v: 50, t: now - 10_000 },
      { kind: 'battery', rid: 'b2', q: 'power', v: 9, t: now - 10_000 },
      { kind: 'battery', rid: 'b1', q: 'power', v: 2000, t: now - 5_000 },
    ])
    const read = await ctx.dataPlane.readTelemetry!('battery', 'b1', ['power', 'soc'], {
      since: now - 15_000,
    })
    expect(read.map((record) => [record.q, record.v])).toEqual([
      ['soc', 50],
      ['power', 2000],
    ])
    expect(await ctx.dataPlane.readTelemetry!('battery', 'nothing', ['power'], { since: 0 })).toEqual([])
    // Each read's consumer is gone once the read is: 20 reads leave none behind on OE_TEL.
    for (let i = 0; i < 20; i++) {
      await ctx.dataPlane.readTelemetry!('battery', 'b1', ['power'], { since: now - 15_000 })
      await ctx.dataPlane.readTelemetry!('battery', 'b1', ['power'], { since: now + 60_000 })
    }
    const consumersLeft = async () => (await dataPlane.manager.streams.info('OE_TEL')).state.consumer_count
    for (let i = 0; i < 50 && (await consumersLeft()) > 0; i++) await Bun.sleep(20)
    expect(await consumersLeft()).toBe(0)
    await ctx.dataPlane.publishControl!('battery', 'b1', 'limit_power', { v: 1500, u: 'W' })
    const message = await dataPlane.jetstream.streams
      .get('OE_CTL')
      .then((stream) => stream.getMessage({ last_by_subj: 'oe.ctl.battery.b1.limit_power' }))
    expect(decodeCbor(message!.data)).toEqual({ v: 1500, u: 'W' })
    await expect(ctx.dataPlane.publishControl!('battery', 'b.1', 'limit_power', {})).rejects.toThrow(
      /plugin probe-c/,
    )
  })
})

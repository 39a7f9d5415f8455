/**
 * The simulator plugin in a real node: standing data and telemetry land in JetStream and KV,
 * status shows it, a bad slice stops the start with exit 78, and a `limit_power` published by a
 * local NATS client clamps a charging EVSE.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { connect } from '@nats-io/transport-node'
import { decode as decodeCbor, encode as encodeCbor } from 'cbor-x'
import { afterEach, describe, expect, test } from 'vitest'
import {
  cleanupAll,
  type RunningNode,
  readSubject,
  runCli,
  startNode,
  tempDir,
  waitFor,
} from './helpers/node-process.ts'

afterEach(cleanupAll)

const CONFIG = '[plugins.simulator]\nenabled = true\nsites = 2\ninterval = "200ms"\nseed = 1\n'

async function api<T>(node: RunningNode, method: string, path: string, body?: unknown): Promise<T> {
  const response = await node.fetch(path, {
    method,
    ...(body === undefined
      ? {}
      : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
  })
  const text = await response.text()
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`)
  return JSON.parse(text) as T
}

/**
 * A subject the simulator writes every 200 ms never falls quiet for a second, so read it with a
 * settle time shorter than the interval: the stored backlog arrives in one burst.
 */
const readLive = (node: RunningNode, subject: string) => readSubject(node, subject, 120)

describe('simulator in a node', () => {
  test('publishes standing data and telemetry; status lists the plugin; it stops cleanly', async () => {
    const node = await startNode({ config: CONFIG })
    const expected = [
      'oe.tel.meter.site-1-meter.power',
      'oe.tel.meter.site-2-meter.energy_import',
      'oe.tel.meter.site-1-meter.voltage',
      'oe.tel.meter.site-2-meter.frequency',
      'oe.tel.pv.site-1-pv.power',
      'oe.tel.battery.site-2-bat.soc',
      'oe.tel.evse.site-2-evse-2.power',
    ]
    let telemetry: Awaited<ReturnType<typeof readSubject>> = []
    await waitFor(
      async () => {
        telemetry = await readLive(node, 'oe.tel.>')
        const seen = new Set(telemetry.map((m) => m.subject))
        return expected.every((subject) => seen.has(subject)) && telemetry.length >= 2 * 15 * 3
      },
      15_000,
      'telemetry of both sites',
    )
    expect(new Set(telemetry.map((m) => m.subject)).size).toBe(2 * 15)
    for (const message of telemetry) {
      expect(message.subject).toMatch(/^oe\.tel\.(meter|pv|battery|evse)\.site-[12]-[a-z0-9-]+\.[a-z_]+$/)
      expect(typeof message.data.v).toBe('number')
      expect(Math.abs(Date.now() - message.data.t!)).toBeLessThan(60_000)
    }
    const soc = telemetry.filter((m) => m.subject.endsWith('.soc')).map((m) => m.data.v!)
    expect(Math.min(...soc)).toBeGreaterThanOrEqual(5)
    expect(Math.max(...soc)).toBeLessThanOrEqual(95)
    // Readings of one subject are stamped on the interval's grid (a machine stalled for over
    // five intervals makes the simulator skip ticks, never bunch them).
    const times = telemetry
      .filter((m) => m.subject === 'oe.tel.meter.site-1-meter.power')
      .map((m) => m.data.t!)
    for (let i = 1; i < times.length; i++) {
      expect(times[i]! - times[i - 1]!).toBeGreaterThan(0)
      expect((times[i]! - times[0]!) % 200).toBe(0)
    }

    const standing = await readSubject(node, 'oe.std.>', 500)
    expect(standing.map((m) => m.subject).sort()).toEqual(
      [1, 2]
        .flatMap((n) => [
          `oe.std.site.site-${n}`,
          `oe.std.meter.site-${n}-meter`,
          `oe.std.pv.site-${n}-pv`,
          `oe.std.battery.site-${n}-bat`,
          `oe.std.evse.site-${n}-evse-1`,
          `oe.std.evse.site-${n}-evse-2`,
        ])
        .sort(),
    )
    const { resource } = await api<{ resource: { site: string; attrs: Record<string, unknown> } }>(
      node,
      'GET',
      '/v1/resources/battery/site-2-bat',
    )
    expect(resource).toMatchObject({
      site: 'site-2',
      attrs: { capacityWh: expect.any(Number), ratedPowerW: expect.any(Number), vendor: expect.any(String) },
    })

    const status = await api<{ plugins: Record<string, unknown>[] }>(node, 'GET', '/v1/status')
    const simulator = status.plugins.find((plugin) => plugin.id === 'simulator')
    expect(simulator).toMatchObject({ state: 'running', ready: true, sites: 2, resources: 12 })
    expect(simulator!.published).toBeGreaterThan(0)
    const metrics = await (await node.fetch('/metrics', { token: null })).text()
    expect(metrics).toMatch(/^oe_plugin_simulator_records_published_total [1-9]\d*$/m)

    expect(await node.stop()).toBe(0)
  })

  test('a bad slice stops the start with exit 78 and names the key', async () => {
    for (const [slice, message] of [
      ['interval = "fast"\n', 'plugins.simulator.interval'],
      ['sitez = 2\n', 'plugins.simulator.sitez: unknown key'],
    ]) {
      const dataDir = await tempDir()
      await writeFile(join(dataDir, 'config.toml'), `[plugins.simulator]\nenabled = true\n${slice}`)
      const result = await runCli(['--data-dir', dataDir, 'start', '--api', '127.0.0.1:0'])
      expect(result.code).toBe(78)
      expect(result.stderr).toContain(message)
    }
  })

  test('limit_power from a local NATS client clamps a charging EVSE and reports it', async () => {
    const node = await startNode({ config: CONFIG })
    const rid = 'site-1-evse-1'
    // Make sure a car is charging, so the limit has something to clamp.
    await api(node, 'POST', '/v1/plugins/simulator/actions/plug_in', { rid, energyWh: 40_000 })
    const { nats } = await api<{ nats: { url: string } }>(node, 'GET', '/v1/status')
    const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8'))
    const nc = await connect({ servers: nats.url, user: auth.user, pass: auth.password })
    try {
      const readings: { v: number; t: number }[] = []
      const subscription = nc.subscribe(`oe.tel.evse.${rid}.power`, {
        callback: (error, message) => {
          if (!error) readings.push(decodeCbor(message.data) as { v: number; t: number })
        },
      })
      await waitFor(() => readings.some((r) => r.v > 2_000), 10_000, 'the EV to charge')

      const limitApplied = async () => readSubject(node, `oe.evt.evse.${rid}.limit_applied`, 300)
      // The plugin's control subscription is set up asynchronously after readiness: resend
      // until it is there (a repeated limit is harmless).
      await waitFor(
        async () => {
          if ((await limitApplied()).length > 0) return true
          nc.publish(
            `oe.ctl.evse.${rid}.limit_power`,
            encodeCbor({ v: 1_400, u: 'W', until: Date.now() + 60_000, source: 'test' }),
          )
          await nc.flush()
          await Bun.sleep(500)
          return (await limitApplied()).length > 0
        },
        20_000,
        'limit_applied',
      )
      const [event] = await limitApplied()
      expect(event!.data).toMatchObject({ command: 'limit_power', v: 1_400, u: 'W', source: 'test' })
      const appliedAt = event!.data.t!
      await waitFor(() => readings.filter((r) => r.t > appliedAt).length >= 5, 10_000, 'limited readings')
      for (const reading of readings.filter((r) => r.t > appliedAt)) {
        expect(reading.v).toBeLessThanOrEqual(1_400)
        expect(reading.v).toBeGreaterThan(1_000)
      }
      const limits = await readSubject(node, `oe.tel.evse.${rid}.power_limit`, 300)
      expect(limits.length).toBeGreaterThan(0)
      expect(limits.every((m) => m.data.v === 1_400)).toBe(true)
      subscription.unsubscribe()
    } finally {
      await nc.close()
    }
  })
})

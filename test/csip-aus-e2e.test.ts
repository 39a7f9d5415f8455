/**
 * End to end on a real data plane: an embedded nats-server with JetStream, the plugin host
 * running the simulator (one sunny site exporting) and the csip-aus client against the in-repo
 * utility server over mutual TLS. A DERControl on the server becomes `oe.ctl.site.site-1.limit_export`,
 * the simulator curtails the site, and the change shows in the readings the client posts back to
 * the server's MirrorUsagePoint; the client's state sits in JetStream KV.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Kvm } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/nats-core'
import { Registry } from 'prom-client'
import { afterAll, beforeAll, expect, test } from 'vitest'
import {
  connectDataPlane,
  DataPlane,
  EmbeddedNatsServer,
  encodeCbor,
  parseTelemetrySubject,
  subjects,
  type TelemetryRecord,
} from '../data-plane/index.ts'
import { PluginHost } from '../plugins/host.ts'
import { csipAusPlugin } from '../plugins/ieee2030-5/index.ts'
import { simulatorPlugin } from '../plugins/simulator/index.ts'
import { type LogEntry, recordingLogger, waitUntil } from './helpers/csip-client-harness.ts'
import { CsipTestServer, makePki, type Pki } from './helpers/csip-server.ts'

const SITE_LFDI = '3E4F45AB31EDFE5B67E343E5E4562E3100000005'
let dir: string
let pki: Pki
let nats: EmbeddedNatsServer
let connection: NatsConnection
let dataPlane: DataPlane
let server: CsipTestServer
let host: PluginHost
const logs: LogEntry[] = []
const watching = new AbortController()

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'csip-e2e-'))
  pki = makePki(dir)
  const logger = recordingLogger(logs)
  nats = new EmbeddedNatsServer({ dir: join(dir, 'nats') }, { logger })
  await nats.start()
  connection = await connectDataPlane({ servers: nats.url, ...nats.credentials })
  const day = 86_400_000
  dataPlane = new DataPlane(
    {
      limits: Object.fromEntries(
        ['OE_TEL', 'OE_EVT', 'OE_CTL', 'OE_STD', 'OE_PEER', 'OE_OUT'].map((name) => [
          name,
          { maxAgeMs: day, maxBytes: 64 * 1024 * 1024 },
        ]),
      ) as never,
    },
    { connection, logger },
  )
  await dataPlane.start()

  server = new CsipTestServer({ pki })
  server.rates = {
    dcap_poll_seconds: 5,
    fsa_list_poll_seconds: 1,
    derp_list_poll_seconds: 1,
    der_list_poll_seconds: 5,
    mup_post_seconds: 1,
  }
  server.createProgram(0)
  server.setDefaultControl({ opModExpLimW: 20_000, opModImpLimW: 20_000 })
  await server.start()

  // The host's own facade: publishControl into OE_CTL, readTelemetry from OE_TEL.
  const csip = csipAusPlugin
  // Yesterday at noon (local time), replayed: the PV of seed 5's site exports about 2 kW.
  const now = new Date()
  const noon = new Date(now.getFullYear(), now.getMonth(), now.getDate() - 1, 12, 0, 0)
  host = new PluginHost(
    {
      config: {
        simulator: {
          enabled: true,
          sites: 1,
          interval: '500ms',
          seed: 5,
          evses_per_site: 0,
          start: noon.toISOString(),
        },
        'csip-aus': {
          enabled: true,
          server: `${server.url}/dcap`,
          cert: pki.clientCert,
          key: pki.clientKey,
          ca: pki.ca,
          mode: 'aggregator',
          sites: {
            'site-1': {
              nmi: '4103000005',
              lfdi: SITE_LFDI,
              meter: 'meter.site-1-meter',
              ders: ['pv.site-1-pv', 'battery.site-1-bat'],
            },
          },
        },
      },
      dir: join(dir, 'plugins'),
    },
    { dataPlane, logger, registry: new Registry(), definitions: [simulatorPlugin, csip] },
  )
  await host.start()
}, 60_000)

afterAll(async () => {
  watching.abort()
  await host?.stop()
  await server?.stop()
  await dataPlane?.stop()
  await connection?.close()
  await nats?.stop()
  await rm(dir, { recursive: true, force: true })
})

const sitePower = () => server.readings().filter((reading) => reading.description === 'Site active power')

test('a DERControl on the utility server curtails the simulated site, visible in the posted readings', async () => {
  // Registered with its DER ratings from the simulator's standing data, readings flowing.
  await waitUntil(() => sitePower().length >= 2, 20_000, 'site readings')
  const device = server.devices[0]!
  expect(device).toMatchObject({ lfdi: SITE_LFDI, nmi: '4103000005' })
  expect(device.der.dercap).toBeDefined()
  expect(sitePower().at(-1)!.value).toBeLessThan(-1_000) // exporting

  const before = sitePower().length
  const control = server.createControl({ start: server.now(), duration: 60, base: { opModExpLimW: 500 } })
  const applied = (async () => {
    for await (const message of dataPlane.watch('oe.evt.site.site-1.limit_applied', {
      fromStart: true,
      signal: AbortSignal.timeout(20_000),
    })) {
      const event = message.data as { command: string; v: number; source?: string }
      if (event.command === 'limit_export' && event.v === 500) return event
    }
  })()
  expect(await applied).toMatchObject({ source: `csip-aus:event:${control.mrid}` })
  // A full post interval after the change: the site exports no more than 500 W.
  await waitUntil(() => sitePower().length >= before + 4, 20_000, 'readings after the control')
  expect(sitePower().at(-1)!.value).toBeGreaterThanOrEqual(-510)
  expect(server.responses.filter((r) => r.subject === control.mrid).map((r) => r.status)).toEqual([1, 2])

  // State lives in JetStream KV, under the plugin's own bucket.
  const kv = await new Kvm(connection).open('oe-plugin-csip-aus-state')
  const entry = await kv.get('site.site-1')
  const state = JSON.parse(new TextDecoder().decode(entry!.value)) as {
    endDevice: string
    published: Record<string, { v: number }>
  }
  expect(state.endDevice).toBe('/edev/1')
  expect(state.published.limit_export?.v).toBe(500)
  expect(host.ready()).toBe(true)
}, 60_000)

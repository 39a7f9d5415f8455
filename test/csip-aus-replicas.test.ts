/**
 * Two replicas of one node on one real nats-server, each running the csip-aus plugin against the
 * same in-repo utility server over mutual TLS. Only the replica holding the plugin lease registers,
 * polls, responds and publishes; the other stands by. When the owner's lease manager dies without
 * releasing (a crash, as the cluster sees it), the standby takes over from the shared KV state:
 * no second registration, no duplicate response, no command published twice, and the control is
 * still followed (its cancellation becomes one command and one response).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstream } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/nats-core'
import { connect } from '@nats-io/transport-node'
import { Registry } from 'prom-client'
import { afterAll, expect, test } from 'vitest'
import { DataPlane, decodeCbor, LeaseManager } from '../data-plane/index.ts'
import { configSchema } from '../node/config.ts'
import { silentLogger } from '../node/logger.ts'
import { retentionLimits } from '../node/node.ts'
import { PluginHost } from '../plugins/host.ts'
import { csipAusPlugin } from '../plugins/ieee2030-5/index.ts'
import { CsipTestServer, makePki, type Pki } from './helpers/csip-server.ts'
import { cleanupAll, startNatsServer, waitFor } from './helpers/node-process.ts'

afterAll(cleanupAll)

const SITE_LFDI = '3E4F45AB31EDFE5B67E343E5E4562E3100000007'
const CONTROL_SUBJECT = 'oe.ctl.site.site-1.limit_export'

const silent = silentLogger()

interface Replica {
  id: string
  nc: NatsConnection
  /** The lease manager's own connection: closing it kills the lease manager without a release. */
  leaseConnection: NatsConnection
  dataPlane: DataPlane
  leases: LeaseManager
  host: PluginHost
  registry: Registry
  dir: string
}

interface CsipStatus {
  role?: string
  fence?: number
  owner?: { fence: number }
  sites?: Record<string, { registered: boolean; endDevice?: string }>
}

async function replica(url: string, id: string, server: CsipTestServer, pki: Pki): Promise<Replica> {
  const nc = await connect({ servers: url })
  const dataPlane = new DataPlane(
    { limits: retentionLimits(configSchema.parse({})) },
    { connection: nc, logger: silent },
  )
  await dataPlane.start()
  const leaseConnection = await connect({ servers: url })
  // The node's lease settings (3 s term, 1 s renewal).
  const leases = new LeaseManager(
    { replicaId: id, termMs: 3_000, renewMs: 1_000, tickMs: 100 },
    { kv: await LeaseManager.openBucket(jetstream(leaseConnection)), logger: silent },
  )
  await leases.start()
  const dir = await mkdtemp(join(tmpdir(), `oe-csip-replica-${id}-`))
  const registry = new Registry()
  const host = new PluginHost(
    {
      config: {
        'csip-aus': {
          enabled: true,
          server: `${server.url}/dcap`,
          cert: pki.clientCert,
          key: pki.clientKey,
          ca: pki.ca,
          mode: 'aggregator',
          sites: {
            'site-1': {
              nmi: '4103000007',
              lfdi: SITE_LFDI,
              meter: 'meter.site-1-meter',
              ders: ['pv.site-1-pv'],
              rated_w: 5000,
            },
          },
        },
      },
      dir,
    },
    { dataPlane, logger: silent, registry, definitions: [csipAusPlugin], leases },
  )
  await host.start()
  return { id, nc, leaseConnection, dataPlane, leases, host, registry, dir }
}

async function stop(r: Replica): Promise<void> {
  await r.host.stop()
  await r.leases.stop()
  await r.dataPlane.stop()
  await r.nc.close()
  if (!r.leaseConnection.isClosed()) await r.leaseConnection.close()
  await rm(r.dir, { recursive: true, force: true })
}

const csip = (r: Replica): CsipStatus =>
  (r.host.status().find((plugin) => plugin.id === 'csip-aus') ?? {}) as CsipStatus

const requestsOf = async (r: Replica): Promise<number> => {
  const metric = await r.registry.getSingleMetric('oe_plugin_csip_aus_requests_total')?.get()
  return metric?.values[0]?.value ?? 0
}

test('one replica runs the CSIP-AUS client; the other takes over from KV when it crashes', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'oe-csip-replicas-'))
  const pki = makePki(dir)
  const server = new CsipTestServer({ pki })
  server.rates = {
    dcap_poll_seconds: 5,
    fsa_list_poll_seconds: 1,
    derp_list_poll_seconds: 1,
    der_list_poll_seconds: 5,
    mup_post_seconds: 1,
  }
  server.createProgram(0)
  server.setDefaultControl({ opModExpLimW: 20_000 })
  await server.start()
  const nats = await startNatsServer()

  // Every limit_export command on the data plane, as a device driver would receive it.
  const observer = await connect({ servers: nats.url })
  const commands: { v: number; source: string }[] = []
  const subscription = observer.subscribe(CONTROL_SUBJECT)
  void (async () => {
    for await (const message of subscription) commands.push(decodeCbor(message.data) as (typeof commands)[0])
  })()
  await observer.flush()

  const registrations = () =>
    server.requests.filter((request) => request.method === 'POST' && request.path === '/edev').length
  const mirrorsCreated = () =>
    server.requests.filter((request) => request.method === 'POST' && request.path === '/mup').length
  const responsesTo = (mrid: string) =>
    server.responses.filter((response) => response.subject === mrid).map((response) => response.status)

  const a = await replica(nats.url, 'ra', server, pki)
  const b = await replica(nats.url, 'rb', server, pki)
  const replicas = [a, b]
  try {
    const isActive = (r: Replica) =>
      csip(r).role === 'active' && csip(r).sites?.['site-1']?.registered === true
    await waitFor(() => replicas.some(isActive), 15_000, 'one replica to register the site')
    const owner = replicas.find(isActive)!
    const standby = owner === a ? b : a
    await waitFor(() => commands.length >= 1, 10_000, 'the default envelope on the data plane')
    // Several poll cycles with both replicas up.
    await Bun.sleep(3_000)
    expect(server.devices).toHaveLength(1)
    expect(registrations()).toBe(1)
    expect(mirrorsCreated()).toBe(2) // the site's and its DER's MirrorUsagePoints, once each
    expect(await requestsOf(standby)).toBe(0)
    expect(commands).toEqual([expect.objectContaining({ v: 20_000 })])
    expect(csip(standby).role).toBe('standby')
    expect(a.host.ready() && b.host.ready()).toBe(true)
    // The standby shows the owner and the shared state (read every few seconds).
    await waitFor(
      () =>
        csip(standby).owner?.fence === csip(owner).fence &&
        csip(standby).sites?.['site-1']?.registered === true,
      6_000,
      'the standby to show the owner',
    )
    expect(csip(standby).sites?.['site-1']).toMatchObject({ registered: true, endDevice: '/edev/1' })

    // A DERControl: one command, each response once.
    const control = server.createControl({ start: server.now(), duration: 300, base: { opModExpLimW: 500 } })
    const fromControl = () =>
      commands.filter((command) => command.source === `csip-aus:event:${control.mrid}`)
    await waitFor(
      () => fromControl().length >= 1 && responsesTo(control.mrid).length >= 2,
      10_000,
      'the control',
    )
    await Bun.sleep(2_000)
    expect(fromControl()).toEqual([expect.objectContaining({ v: 500 })])
    expect(responsesTo(control.mrid)).toEqual([1, 2])
    const commandsBefore = commands.length

    // The owner's lease manager dies without releasing: the standby takes over within a term.
    const firstFence = csip(owner).fence!
    const cut = Date.now()
    await owner.leaseConnection.close()
    await waitFor(() => isActive(standby), 5_000, 'the standby to take over')
    const takeoverMs = Date.now() - cut
    await waitFor(() => csip(owner).role === 'standby', 5_000, 'the old owner to stand by')
    const oldOwnerRequests = await requestsOf(owner)
    const newOwnerRequests = await requestsOf(standby)
    // Several poll cycles under the new owner.
    await Bun.sleep(3_000)
    expect(await requestsOf(owner)).toBe(oldOwnerRequests) // the old owner stopped at once
    expect(await requestsOf(standby)).toBeGreaterThan(newOwnerRequests) // the new one polls
    // A higher fence, and the old owner (now standby) names it.
    expect(csip(standby).fence).toBeGreaterThan(firstFence)
    await waitFor(
      () => csip(owner).owner?.fence === csip(standby).fence,
      6_000,
      'the old owner to name the new',
    )
    expect(registrations()).toBe(1)
    expect(mirrorsCreated()).toBe(2)
    expect(server.devices).toHaveLength(1)
    expect(commands).toHaveLength(commandsBefore) // the envelope in force is not published again
    expect(responsesTo(control.mrid)).toEqual([1, 2])

    // The new owner follows the control: its cancellation is one command back to the default
    // and one response.
    server.cancelActiveControls()
    await waitFor(
      () => commands.length > commandsBefore && responsesTo(control.mrid).length >= 3,
      10_000,
      'cancel',
    )
    await Bun.sleep(2_000)
    expect(commands.slice(commandsBefore)).toEqual([expect.objectContaining({ v: 20_000 })])
    expect(responsesTo(control.mrid)).toEqual([1, 2, 6])
    expect(registrations()).toBe(1)
    console.info(
      `csip-aus replicas: takeover ${takeoverMs} ms; EndDevice POSTs ${registrations()}; ` +
        `MirrorUsagePoint POSTs ${mirrorsCreated()}; limit_export commands ${commands.length}; ` +
        `responses ${JSON.stringify(responsesTo(control.mrid))}`,
    )
  } finally {
    subscription.unsubscribe()
    await observer.close()
    await Promise.allSettled(replicas.map(stop))
    await server.stop()
    await rm(dir, { recursive: true, force: true })
  }
}, 90_000)

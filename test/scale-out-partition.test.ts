/**
 * Scale-out (issue 15): the replica owning a transfer is partitioned from the NATS cluster while
 * it keeps running and keeps its link to the partner. It must stop sending before another
 * replica takes over, and after the partition heals it must not send again: the partner holds
 * each record once.
 *
 * Network namespaces (test/helpers/netns.ts, root needed): replica 3 of A runs in namespace `a`,
 * reaching the 3-server cluster (in the test's namespace, listening on all addresses) over its
 * management veth and B over the `a`↔`b` link; B runs in namespace `b`, reachable from the test's
 * namespace over its own management veth. Replicas 1 and 2 run in the test's namespace. Cutting
 * namespace `a`'s management veth leaves replica 3 with B alone.
 */
import { copyFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { api, cardOf, propose, waitAgreementState, waitPeerState } from './helpers/federation.ts'
import { startNatsCluster, stopClusters, storedOnCluster } from './helpers/nats-cluster.ts'
import { createLab, type NetnsLab, run } from './helpers/netns.ts'
import { cleanupAll, type RunningNode, runCli, startNode, tempDir, waitFor } from './helpers/node-process.ts'
import {
  compare,
  METER_POWER_GRANT,
  PROVIDER_ALIAS,
  ranges,
  TelemetryFeeder,
  valuesOn,
} from './helpers/transfer.ts'

const TAG = 'p'
let lab: NetnsLab | undefined

afterAll(async () => {
  await cleanupAll()
  await stopClusters()
  lab?.destroy()
})

interface StatusJson {
  replica: { id: string }
  leases: { name: string; owner: string; mine: boolean }[]
}

const status = (node: RunningNode) => api<StatusJson>(node, 'GET', '/v1/status')

/** The address of the test namespace's end of a host's management veth (its peer is .x+1). */
function outsideAddress(inside: string): string {
  const parts = inside.split('.').map(Number)
  parts[3] = parts[3]! - 1
  return parts.join('.')
}

/** Who owns `transfer.<id>` as the replicas in `nodes` see it. */
async function ownerAmong(nodes: RunningNode[], id: string): Promise<string | undefined> {
  for (const node of nodes) {
    const s = await status(node)
    if (s.leases.some((lease) => lease.name === `transfer.${id}` && lease.mine)) return s.replica.id
  }
  return undefined
}

describe('scale-out: a partitioned owner', () => {
  test('stops before another replica takes over, and does not send again once healed', async () => {
    lab = createLab(TAG)
    const prefix = `oe${process.pid}${TAG}`
    const { a, b } = lab.hosts
    const cluster = await startNatsCluster({ host: '0.0.0.0' })
    const fromA = cluster.servers.map(
      (server) => `nats://${outsideAddress(a.managementAddress)}:${server.port}`,
    )

    const dirs = await Promise.all([0, 1, 2].map(() => tempDir('oe-replica-')))
    for (const dir of dirs) expect((await runCli(['--data-dir', dir, 'init', '--org', 'OrgA'])).code).toBe(0)
    for (const dir of dirs.slice(1))
      await copyFile(join(dirs[0]!, 'keys', 'node.key'), join(dir, 'keys', 'node.key'))
    const rootReplica = async (i: number) =>
      startNode({
        dataDir: dirs[i]!,
        config: 'org = "OrgA"\n',
        args: ['--nats-url', cluster.url],
        readyTimeoutMs: 60_000,
      })
    const r1 = await rootReplica(0)
    // Replica 3, in namespace a: NATS over the management veth, B over the link.
    const r3 = await startNode({
      dataDir: dirs[2]!,
      config: 'org = "OrgA"\n[nats]\nreplicas = 3\n',
      command: lab.exec('a'),
      api: `${a.managementAddress}:7410`,
      listen: [`/ip4/${a.linkAddress}/tcp/7400`],
      args: ['--nats-url', fromA.join(',')],
      readyTimeoutMs: 60_000,
    })
    // B, in namespace b: libp2p on the link (for replica 3) and on its management address (for 1, 2).
    const consumer = await startNode({
      config: 'org = "OrgB"\n',
      command: lab.exec('b'),
      api: `${b.managementAddress}:7410`,
      listen: [`/ip4/${b.linkAddress}/tcp/7400`, `/ip4/${b.managementAddress}/tcp/7401`],
    })
    await api(r1, 'POST', '/v1/peers', { card: await cardOf(consumer), alias: 'cons' })
    await api(consumer, 'POST', '/v1/peers', { card: await cardOf(r1), alias: PROVIDER_ALIAS })
    await waitPeerState(r1, 'cons', 'connected')
    await waitPeerState(r3, 'cons', 'connected')
    const id = await propose(consumer, PROVIDER_ALIAS, { grants: [METER_POWER_GRANT] })
    await waitAgreementState(r3, id, 'proposed')
    await api(r1, 'POST', `/v1/agreements/${id}/accept`)
    await waitAgreementState(consumer, id, 'active')
    const r3Id = (await status(r3)).replica.id
    await waitFor(async () => (await ownerAmong([r1, r3], id)) !== undefined, 15_000, 'an owner')
    // The owner must be replica 3: if replica 1 took it, it gives it up (a graceful restart).
    let first = r1
    if ((await ownerAmong([r1, r3], id)) !== r3Id) {
      await r1.stop()
      await waitFor(async () => (await ownerAmong([r3], id)) === r3Id, 15_000, 'replica 3 to own it')
      first = await rootReplica(0)
    }
    const r2 = await rootReplica(1)
    await waitPeerState(r2, 'cons', 'connected')
    await waitAgreementState(r2, id, 'active')

    const feeder = new TelemetryFeeder(first, { total: 16_000, batch: 500, pauseMs: 60 }).start()
    await feeder.whenAccepted(4_000)
    await waitFor(async () => (await valuesOn(consumer, 'oe.peer.prov.tel.meter.*.power')).length > 0, 15_000)
    expect(await ownerAmong([r3], id)).toBe(r3Id)

    // Partition replica 3 from the cluster; it keeps running, and keeps its link to B: whatever
    // it still holds it could send, unless it stops when its lease runs out.
    const cutAt = Date.now()
    const down = run(['ip', '-n', a.ns, 'link', 'set', `${prefix}ma`, 'down'])
    expect(down.ok, down.out).toBe(true)
    let next: string | undefined
    await waitFor(
      async () => {
        next = await ownerAmong([first, r2], id)
        return next !== undefined
      },
      10_000,
      'another replica to take over',
    )
    const takeoverMs = Date.now() - cutAt
    console.log(`[scale-out partition] takeover in ${takeoverMs} ms (${r3Id} → ${next})`)
    expect(takeoverMs).toBeLessThanOrEqual(5_000)
    await feeder.whenAccepted(10_000)

    // Heal: replica 3 comes back, knows its lease is gone, and sends nothing more.
    expect(run(['ip', '-n', a.ns, 'link', 'set', `${prefix}ma`, 'up']).ok).toBe(true)
    await waitFor(async () => (await status(r3)).leases !== undefined, 20_000, 'replica 3 to answer again')
    await Bun.sleep(2_000)
    expect(await ownerAmong([r3], id)).toBeUndefined()
    expect(await ownerAmong([first, r2], id)).toBe(next)
    await feeder.done()

    const stored = await storedOnCluster(cluster.url)
    let received: { rid: string; v: number }[] = []
    let last = -1
    let stableSince = Date.now()
    const deadline = Date.now() + 60_000
    while (Date.now() < deadline) {
      received = await valuesOn(consumer, `oe.peer.${PROVIDER_ALIAS}.tel.meter.*.power`)
      if (received.length !== last) {
        last = received.length
        stableSince = Date.now()
      } else if (received.length >= stored.length && Date.now() - stableSince >= 3_000) break
      await Bun.sleep(1_000)
    }
    const result = compare(feeder.accepted, stored, received)
    console.log(
      `[scale-out partition] accepted ${feeder.accepted.size}, stored ${stored.length}, received ${received.length}, ` +
        `lost ${result.lost.length}, duplicated ${result.duplicated.length}`,
    )
    expect(ranges(result.lostAtProvider)).toBe('')
    expect({
      lost: ranges(result.lost),
      duplicated: ranges(result.duplicated.map(([v]) => v)),
      unexpected: ranges(result.unexpected),
    }).toEqual({ lost: '', duplicated: '', unexpected: '' })
    expect(received.length).toBe(stored.length)
  }, 180_000)
})

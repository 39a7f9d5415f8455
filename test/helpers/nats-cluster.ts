/**
 * A real NATS cluster on loopback for scale-out tests: `size` nats-server processes with
 * JetStream, joined by `cluster {}` routes. Route ports cannot be 0 (each server must name the
 * others), so free ports are found by binding and releasing. Each server can be killed and
 * started again on the same ports and store, and the cluster waits for a JetStream meta leader
 * before it is handed out.
 *
 *   const cluster = await startNatsCluster()           // 3 servers
 *   startNode({ args: ['--nats-url', cluster.url] })
 *   await cluster.servers[0].kill(); await cluster.servers[0].start()
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { DeliverPolicy, jetstream, jetstreamManager, StorageType } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { decodeCbor, freePort } from '../../data-plane/index.ts'
import { tempDir, waitFor } from './node-process.ts'

const clusters: (() => Promise<void>)[] = []

/** Kill every cluster started (call before `cleanupAll`, which removes their stores). */
export async function stopClusters(): Promise<void> {
  while (clusters.length > 0) await clusters.pop()!().catch(() => {})
}

export interface ClusterServer {
  name: string
  port: number
  clusterPort: number
  url: string
  readonly running: boolean
  /** SIGKILL (a crash), and wait for the exit. */
  kill: () => Promise<void>
  /** Start again on the same ports and store; resolves once it answers. */
  start: () => Promise<void>
}

export interface NatsCluster {
  servers: ClusterServer[]
  /** Every server's client URL, comma-separated (what `--nats-url` takes). */
  url: string
  stop: () => Promise<void>
}

export async function startNatsCluster(
  options: {
    size?: number
    executable?: string
    name?: string
    /** Client listen host (default 127.0.0.1; `0.0.0.0` lets network namespaces reach it). */
    host?: string
    /** Set on the one fresh start after a cluster that did not form. */
    retried?: boolean
  } = {},
): Promise<NatsCluster> {
  const size = options.size ?? 3
  const dir = await tempDir('oe-nats-cluster-')
  const ports: { port: number; clusterPort: number }[] = []
  for (let i = 0; i < size; i++) ports.push({ port: await freePort(), clusterPort: await freePort() })
  const routes = ports.map((p) => `nats-route://127.0.0.1:${p.clusterPort}`)
  const servers: ClusterServer[] = []
  for (let i = 0; i < size; i++) {
    const name = `n${i + 1}`
    const store = join(dir, name)
    await mkdir(store, { recursive: true })
    const config = join(dir, `${name}.conf`)
    await writeFile(
      config,
      [
        `server_name: ${name}`,
        `listen: ${options.host ?? '127.0.0.1'}:${ports[i]!.port}`,
        `jetstream { store_dir: ${JSON.stringify(store)} }`,
        'cluster {',
        `  name: ${options.name ?? 'oe-test'}`,
        `  listen: 127.0.0.1:${ports[i]!.clusterPort}`,
        `  routes: [${routes.filter((_, j) => j !== i).join(', ')}]`,
        '}',
        '',
      ].join('\n'),
    )
    let child: ChildProcess | undefined
    let exited: Promise<void> = Promise.resolve()
    const start = async (): Promise<void> => {
      if (child && child.exitCode === null && child.signalCode === null) return
      const proc = spawn(options.executable ?? 'nats-server', ['-c', config], {
        stdio: ['ignore', 'ignore', 'pipe'],
      })
      child = proc
      exited = new Promise<void>((resolve) => proc.on('exit', () => resolve()))
      await new Promise<void>((resolve, reject) => {
        let log = ''
        const timer = setTimeout(() => reject(new Error(`${name} not ready: ${log.slice(-1000)}`)), 15_000)
        proc.stderr!.on('data', (chunk: Buffer) => {
          log += chunk.toString()
          if (log.includes('Server is ready')) {
            clearTimeout(timer)
            resolve()
          }
        })
        proc.on('exit', () => {
          clearTimeout(timer)
          reject(new Error(`${name} exited: ${log.slice(-1000)}`))
        })
      })
      // Keep reading stderr so the pipe never fills.
      proc.stderr!.resume()
    }
    const server: ClusterServer = {
      name,
      port: ports[i]!.port,
      clusterPort: ports[i]!.clusterPort,
      url: `nats://127.0.0.1:${ports[i]!.port}`,
      get running() {
        return child !== undefined && child.exitCode === null && child.signalCode === null
      },
      kill: async () => {
        if (server.running) child!.kill('SIGKILL')
        await exited
      },
      start,
    }
    servers.push(server)
  }
  const stop = async (): Promise<void> => {
    await Promise.all(
      servers.map(async (server) => {
        await server.kill()
      }),
    )
  }
  // Registered before the start, so a failed start is cleaned up too.
  clusters.push(stop)
  await Promise.all(servers.map((server) => server.start()))
  const url = servers.map((server) => server.url).join(',')
  await waitJetStream(url)
  try {
    await waitPlacement(url, size)
  } catch (error) {
    // Seen once in CI: a cluster whose JetStream never had `size` peers to place on (a node
    // starting on it waited 60 s on "no suitable peers for placement"). Start a fresh one.
    await stop()
    if (options.retried) throw error
    return startNatsCluster({ ...options, retried: true })
  }
  return { servers, url, stop }
}

/** Wait until a stream with `replicas` copies can be placed (every server is a JetStream peer). */
async function waitPlacement(url: string, replicas: number, timeoutMs = 20_000): Promise<void> {
  const nc = await connect({ servers: url.split(','), maxReconnectAttempts: -1 })
  try {
    const jsm = await jetstreamManager(nc, { timeout: 5_000 })
    await waitFor(
      async () => {
        await jsm.streams.add({
          name: 'PLACEMENT_PROBE',
          subjects: ['placement.probe'],
          num_replicas: replicas,
          storage: StorageType.Memory,
          max_bytes: 1024,
        })
        await jsm.streams.delete('PLACEMENT_PROBE')
        return true
      },
      timeoutMs,
      `a stream of ${replicas} replicas to be placed`,
    )
  } finally {
    await nc.close()
  }
}

/** Wait until the cluster's JetStream answers (a meta leader was elected). */
export async function waitJetStream(url: string, timeoutMs = 20_000): Promise<void> {
  const nc = await connect({ servers: url.split(','), reconnect: true, maxReconnectAttempts: -1 })
  try {
    await waitFor(
      async () => {
        const jsm = await jetstreamManager(nc, { timeout: 1_000 })
        await jsm.getAccountInfo()
        return true
      },
      timeoutMs,
      'a JetStream meta leader',
    )
  } finally {
    await nc.close()
  }
}

/**
 * Every message on `subject` in `stream`, read from the cluster in stream order (subject and
 * decoded CBOR). After a server died, the stream answers once the servers left have elected its
 * new leader: tried up to 6 times, a second apart.
 */
export async function readFromCluster(
  url: string,
  stream: string,
  subject: string,
): Promise<{ subject: string; data: unknown }[]> {
  for (let attempt = 1; ; attempt++) {
    const nc = await connect({ servers: url.split(','), maxReconnectAttempts: -1 })
    try {
      const total = (await (await jetstreamManager(nc, { timeout: 10_000 })).streams.info(stream)).state
        .messages
      const consumer = await jetstream(nc, { timeout: 10_000 }).consumers.get(stream, {
        filter_subjects: [subject],
        deliver_policy: DeliverPolicy.All,
      })
      const out: { subject: string; data: unknown }[] = []
      while (out.length < total) {
        const batch = await consumer.fetch({ max_messages: 2_000, expires: 1_000 })
        let count = 0
        for await (const msg of batch) {
          count += 1
          out.push({ subject: msg.subject, data: decodeCbor(msg.data) })
        }
        if (count === 0) break
      }
      return out
    } catch (error) {
      if (attempt >= 6) throw error
      await Bun.sleep(1_000)
    } finally {
      await nc.close()
    }
  }
}

/** The meter power values stored in OE_TEL on the cluster, in stream order. */
export async function storedOnCluster(url: string): Promise<{ rid: string; v: number }[]> {
  return (await readFromCluster(url, 'OE_TEL', 'oe.tel.meter.*.power')).map(({ subject, data }) => {
    const tokens = subject.split('.')
    return { rid: tokens[tokens.length - 2]!, v: (data as { v: number }).v }
  })
}

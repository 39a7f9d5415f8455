/**
 * The node as an operator runs it: config errors, key permissions, one node per data dir,
 * a missing nats-server, the embedded nats-server dying, graceful and hard stops, and an
 * external NATS.
 */
import { readFileSync } from 'node:fs'
import { chmod, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { afterEach, describe, expect, test } from 'vitest'
import {
  BUN,
  cleanupAll,
  readSubject,
  runCli,
  startNatsServer,
  startNode,
  telemetry,
  tempDir,
  waitFor,
} from './helpers/node-process.ts'

afterEach(cleanupAll)

/** Running, not merely a zombie left for a reaper (this sandbox may have none). */
function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')
  } catch {
    return false
  }
}

async function natsServerPid(dataDir: string): Promise<number> {
  return Number((await readFile(join(dataDir, 'nats', 'nats-server.pid'), 'utf8')).trim())
}

describe('configuration', () => {
  test('a bad config exits 78 and names every bad key path', async () => {
    const dataDir = await tempDir()
    await writeFile(
      join(dataDir, 'config.toml'),
      '[api]\nlisten = "everywhere"\nmax_body_bytes = "lots"\n[nats]\nport = 70000\n[surprise]\nx = 1\n',
    )
    const result = await runCli(['--data-dir', dataDir, 'start'], { env: { OE_NODE_LOG_LEVEL: 'loud' } })
    expect(result.code).toBe(78)
    expect(result.stderr).toContain('api.listen: must be HOST:PORT')
    expect(result.stderr).toContain('api.max_body_bytes:')
    expect(result.stderr).toContain('nats.port: must be a port number')
    expect(result.stderr).toContain('surprise: unknown key')
    expect(result.stderr).toContain('log.level (env OE_NODE_LOG_LEVEL)')
    // Nothing was created for a config that never validated.
    await expect(stat(join(dataDir, 'keys', 'node.key'))).rejects.toThrow()
  })

  test('a TOML syntax error exits 78', async () => {
    const dataDir = await tempDir()
    await writeFile(join(dataDir, 'config.toml'), 'org = "unterminated\n')
    const result = await runCli(['--data-dir', dataDir, 'start'])
    expect(result.code).toBe(78)
    expect(result.stderr).toContain('TOML syntax error')
  })

  test('flags override env, which overrides the file', async () => {
    const node = await startNode({
      config: 'org = "FromFile"\n[log]\nlevel = "info"\n',
      env: { OE_NODE_ORG: 'FromEnv', OE_NODE_LOG_LEVEL: 'warn' },
      args: ['--log-format', 'json'],
    })
    const status = (await (await node.fetch('/v1/status')).json()) as { org: string; listen: string[] }
    expect(status.org).toBe('FromEnv')
    // --listen given by the helper wins over the file's default.
    expect(status.listen).toEqual(['/ip4/127.0.0.1/tcp/0'])
    // log.level warn from env: the info-level "node ready" line is not logged.
    expect(node.stderr()).not.toContain('node ready')
  })
})

describe('logs and ports', () => {
  test('logs are JSON lines by default and human-readable with --log-format pretty', async () => {
    const json = await startNode()
    const line = json
      .stderr()
      .split('\n')
      .find((l) => l.includes('node ready'))!
    expect(JSON.parse(line)).toMatchObject({ level: 30, msg: 'node ready', org: expect.any(String) })
    const pretty = await startNode({ args: ['--log-format', 'pretty'] })
    const prettyLine = pretty
      .stderr()
      .split('\n')
      .find((l) => l.includes('node ready'))!
    expect(prettyLine).toMatch(/INFO.*node ready/)
    expect(() => JSON.parse(prettyLine)).toThrow()
    // No secret reaches the logs.
    const token = pretty.token
    const auth = await readFile(join(pretty.dataDir, 'nats', 'auth.json'), 'utf8')
    for (const node of [json, pretty]) {
      expect(node.stderr()).not.toContain(token)
      expect(node.stderr()).not.toContain(JSON.parse(auth).password)
    }
  })

  test('--nats-port pins the embedded server port', async () => {
    const { freePort } = await import('../data-plane/index.ts')
    const port = await freePort()
    const node = await startNode({ args: ['--nats-port', String(port)] })
    const status = (await (await node.fetch('/v1/status')).json()) as { nats: { url: string } }
    expect(status.nats.url).toBe(`nats://127.0.0.1:${port}`)
  })
})

describe('streams', () => {
  test('all streams and the resources bucket exist, with retention limits from config', async () => {
    const node = await startNode({
      config: '[streams.telemetry]\nmax_age = "2h"\nmax_bytes = "64MiB"\n[streams.outbox]\nmax_age = "30m"\n',
    })
    const status = (await (await node.fetch('/v1/status')).json()) as { nats: { url: string } }
    const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8'))
    expect((await stat(join(node.dataDir, 'nats', 'auth.json'))).mode & 0o777).toBe(0o600)
    const nc = await connect({ servers: status.nats.url, user: auth.user, pass: auth.password })
    try {
      const jsm = await jetstreamManager(nc)
      const names: string[] = []
      for await (const info of jsm.streams.list()) names.push(info.config.name)
      expect(names.sort()).toEqual([
        'KV_oe-agreements',
        'KV_oe-fed-outbox',
        'KV_oe-identity',
        'KV_oe-leases',
        'KV_oe-peers',
        'KV_oe-replicas',
        'KV_oe-resources',
        'KV_oe-transfer',
        'OE_CTL',
        'OE_EVT',
        'OE_OUT',
        'OE_PEER',
        'OE_STD',
        'OE_TEL',
      ])
      const tel = await jsm.streams.info('OE_TEL')
      expect(tel.config.subjects).toEqual(['oe.tel.>'])
      expect(tel.config.max_age).toBe(2 * 3600 * 1e9)
      expect(tel.config.max_bytes).toBe(64 * 1024 * 1024)
      expect((await jsm.streams.info('OE_OUT')).config.max_age).toBe(30 * 60 * 1e9)
      // Without credentials the embedded server refuses a client.
      await expect(connect({ servers: status.nats.url, reconnect: false })).rejects.toThrow()
    } finally {
      await nc.close()
    }
  })
})

describe('identity key and data dir', () => {
  test('a group-readable key is refused', async () => {
    const dataDir = await tempDir()
    expect((await runCli(['--data-dir', dataDir, 'init', '--org', 'Keys'])).code).toBe(0)
    const key = join(dataDir, 'keys', 'node.key')
    expect((await stat(key)).mode & 0o777).toBe(0o600)
    await chmod(key, 0o640)
    const result = await runCli(['--data-dir', dataDir, 'start', '--api', '127.0.0.1:0'])
    expect(result.code).toBe(1)
    expect(result.stderr).toMatch(/refusing to use .*node\.key.*readable or writable by group or others/)
  })

  test('a second start on the same data dir fails with a clear error', async () => {
    const node = await startNode()
    const second = await runCli(['--data-dir', node.dataDir, 'start', '--api', '127.0.0.1:0'])
    expect(second.code).toBe(1)
    expect(second.stderr).toContain(
      `data dir ${node.dataDir} is in use by another oe-node (pid ${node.process.pid})`,
    )
    // The first node is unharmed.
    expect((await node.fetch('/readyz')).status).toBe(200)
  })

  test('init never overwrites an existing identity', async () => {
    const dataDir = await tempDir()
    const first = JSON.parse((await runCli(['--data-dir', dataDir, '--json', 'init', '--org', 'A'])).stdout)
    const second = JSON.parse((await runCli(['--data-dir', dataDir, '--json', 'init', '--org', 'B'])).stdout)
    expect(second.peerId).toBe(first.peerId)
    expect(second.created).toEqual({ key: false, config: false })
    expect(second.org).toBe('A')
  })
})

describe('embedded nats-server', () => {
  test('a missing nats-server is reported with what to do', async () => {
    const dataDir = await tempDir()
    const result = await runCli(['--data-dir', dataDir, 'start', '--api', '127.0.0.1:0'], {
      // Only Bun's own folder on PATH: no nats-server anywhere (the dev build embeds none).
      env: { PATH: BUN.slice(0, BUN.lastIndexOf('/')) },
    })
    expect(result.code).toBe(1)
    expect(result.stderr).toContain('nats-server >= 2.10 was not found')
    expect(result.stderr).toContain('--nats-url')
  })

  test('when the nats-server is killed it restarts, readiness comes back, and nothing accepted is lost', async () => {
    const node = await startNode()
    const before = await node.fetch('/v1/telemetry', {
      method: 'POST',
      body: JSON.stringify(telemetry(100, { rid: () => 'survivor' })),
    })
    expect(await before.json()).toMatchObject({ accepted: 100 })
    const oldPid = await natsServerPid(node.dataDir)
    process.kill(oldPid, 'SIGKILL')
    await waitFor(
      async () => (await node.fetch('/readyz')).status === 503,
      5_000,
      'readyz to report the outage',
    )
    await waitFor(async () => (await node.fetch('/readyz')).status === 200, 20_000, 'readyz to recover')
    expect(await natsServerPid(node.dataDir)).not.toBe(oldPid)
    const after = await node.fetch('/v1/telemetry', {
      method: 'POST',
      body: JSON.stringify(telemetry(50, { rid: () => 'survivor', t: Date.now() + 1000 })),
    })
    expect(await after.json()).toMatchObject({ accepted: 50 })
    expect(await readSubject(node, 'oe.tel.meter.survivor.>', 500)).toHaveLength(150)
    const status = (await (await node.fetch('/v1/status')).json()) as { nats: { restarts: number } }
    expect(status.nats.restarts).toBe(1)
    expect(await (await node.fetch('/metrics')).text()).toMatch(/^oe_nats_server_restarts_total 1$/m)
  })

  test('SIGTERM stops cleanly: exit 0, lock and api file gone, nats-server ended', async () => {
    const node = await startNode()
    const natsPid = await natsServerPid(node.dataDir)
    expect(processAlive(natsPid)).toBe(true)
    expect(await node.stop()).toBe(0)
    await expect(stat(join(node.dataDir, 'node.lock'))).rejects.toThrow()
    await expect(stat(join(node.dataDir, 'api'))).rejects.toThrow()
    await waitFor(() => !processAlive(natsPid), 5_000, 'nats-server to exit')
  })

  test('after kill -9 of the node, its nats-server is gone within 5 s; a restart takes over and keeps the data', async () => {
    const node = await startNode()
    const response = await node.fetch('/v1/telemetry', {
      method: 'POST',
      body: JSON.stringify(telemetry(20, { rid: () => 'crash' })),
    })
    expect(await response.json()).toMatchObject({ accepted: 20 })
    const server = await natsServerPid(node.dataDir)
    await node.kill()
    const killedAt = Date.now()
    await waitFor(() => !processAlive(server), 5_000, 'the nats-server to end with its node')
    console.log(`nats-server gone ${Date.now() - killedAt} ms after kill -9 of the node`)
    const again = await startNode({ dataDir: node.dataDir })
    expect(await readSubject(again, 'oe.tel.meter.crash.>', 500)).toHaveLength(20)
  })

  test('a nats-server left behind anyway (its watchdog killed too) is found by the next start and stopped', async () => {
    const node = await startNode()
    const response = await node.fetch('/v1/telemetry', {
      method: 'POST',
      body: JSON.stringify(telemetry(20, { rid: () => 'left' })),
    })
    expect(await response.json()).toMatchObject({ accepted: 20 })
    const server = await natsServerPid(node.dataDir)
    // Its parent is the watchdog; kill both it and the node at once.
    const stat = readFileSync(`/proc/${server}/stat`, 'utf8')
    const watchdog = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
    expect(readFileSync(`/proc/${watchdog}/cmdline`, 'utf8')).toContain('oe-nats-watchdog')
    process.kill(watchdog, 'SIGKILL')
    await node.kill()
    await Bun.sleep(1_500)
    expect(processAlive(server)).toBe(true)
    const again = await startNode({ dataDir: node.dataDir })
    expect(processAlive(server)).toBe(false)
    expect(await readSubject(again, 'oe.tel.meter.left.>', 500)).toHaveLength(20)
  })
})

describe('external NATS', () => {
  test('--nats-url runs the node on an existing nats-server with credentials', async () => {
    const nats = await startNatsServer({ user: 'org', password: 's3cret-pass' })
    const node = await startNode({ args: ['--nats-url', `nats://org:s3cret-pass@127.0.0.1:${nats.port}`] })
    const status = (await (await node.fetch('/v1/status')).json()) as { nats: Record<string, unknown> }
    expect(status.nats).toMatchObject({
      embedded: false,
      connected: true,
      url: `nats://org:***@127.0.0.1:${nats.port}`,
    })
    expect(JSON.stringify(status)).not.toContain('s3cret-pass')
    expect(node.stderr()).not.toContain('s3cret-pass')
    const ingest = await node.fetch('/v1/telemetry', {
      method: 'POST',
      body: JSON.stringify(telemetry(5, { rid: () => 'external' })),
    })
    expect(await ingest.json()).toMatchObject({ accepted: 5 })
    expect(await readSubject(node, 'oe.tel.meter.external.>', 300)).toHaveLength(5)
  })

  test('wrong credentials for an external NATS fail the start with a clear error', async () => {
    const nats = await startNatsServer({ user: 'org', password: 'right' })
    const dataDir = await tempDir()
    const result = await runCli([
      '--data-dir',
      dataDir,
      'start',
      '--api',
      '127.0.0.1:0',
      '--nats-url',
      `nats://org:wrong@127.0.0.1:${nats.port}`,
    ])
    expect(result.code).toBe(1)
    expect(result.stderr).toMatch(/could not connect to NATS at nats:\/\/org:\*\*\*@127\.0\.0\.1/)
    expect(result.stderr).not.toContain('wrong@')
  })
})

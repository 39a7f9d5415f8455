/**
 * The command line as scripts use it: `--json` shapes, exit codes (0 ok, 1 failure, 2 usage),
 * and ingest/tail against a running node.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { parseCard } from '../node/index.ts'
import {
  cleanupAll,
  type RunningNode,
  runCli,
  spawnCli,
  startNode,
  telemetry,
  tempDir,
  waitFor,
} from './helpers/node-process.ts'

let node: RunningNode
const cli = (...args: string[]) => runCli(['--data-dir', node.dataDir, ...args])

beforeAll(async () => {
  node = await startNode({ config: 'org = "Clitest"\n' })
})
afterAll(cleanupAll)

describe('reporting commands', () => {
  test('status --json has the documented fields', async () => {
    const result = await cli('status', '--json')
    expect(result.code).toBe(0)
    const status = JSON.parse(result.stdout)
    expect(status).toMatchObject({
      org: 'Clitest',
      peerId: expect.stringMatching(/^12D3KooW/),
      uptimeS: expect.any(Number),
      api: node.api,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      // This machine has libcrypto.so.3, so Noise runs on OpenSSL (federation.noise_crypto = auto).
      noiseCrypto: expect.stringMatching(/^openssl \(libcrypto\.so/),
      nats: { url: expect.stringMatching(/^nats:\/\/127\.0\.0\.1:\d+$/), connected: true },
      peers: [],
      agreements: [],
      plugins: [],
    })
  })

  test('status in plain text names the org and NATS state', async () => {
    const result = await cli('status')
    expect(result.stdout).toMatch(/org\s+Clitest/)
    expect(result.stdout).toContain('embedded, connected')
    expect(result.stdout).toMatch(/noise\s+ChaCha20-Poly1305 by openssl \(libcrypto\.so/)
  })

  test('card prints one pasteable line that verifies; --json prints its fields', async () => {
    const text = await cli('card')
    expect(text.code).toBe(0)
    const line = text.stdout.trim()
    expect(line).not.toContain('\n')
    expect(line).toMatch(/^oe1[A-Za-z0-9_-]+$/)
    const card = parseCard(line)
    const json = JSON.parse((await cli('card', '--json')).stdout)
    expect(json).toEqual(card)
    expect(Object.keys(json).sort()).toEqual(['addrs', 'org', 'peerId', 'publicKey'])
    expect(json.org).toBe('Clitest')
  })

  test('card works without a running node, from the data dir', async () => {
    const dataDir = await tempDir()
    const init = JSON.parse(
      (await runCli(['--data-dir', dataDir, '--json', 'init', '--org', 'Offline'])).stdout,
    )
    expect(init).toMatchObject({ org: 'Offline', created: { key: true, config: true } })
    const card = JSON.parse((await runCli(['--data-dir', dataDir, 'card', '--json'])).stdout)
    expect(card).toMatchObject({ org: 'Offline', peerId: init.peerId })
  })

  test('status without a running node exits 1 and says how to start one', async () => {
    const dataDir = await tempDir()
    const result = await runCli(['--data-dir', dataDir, 'status', '--json'])
    expect(result.code).toBe(1)
    expect(JSON.parse(result.stderr)).toMatchObject({ error: 'NodeNotRunningError' })
    expect(result.stderr).toContain('oe-node start')
  })
})

describe('ingest and tail', () => {
  test('ingest from stdin (NDJSON) and tail --from-start --count see the same records', async () => {
    // A quantity no other test here uses: the stream holds these records only, whatever ran before.
    const records = telemetry(250, { rid: (i) => `cli-${i % 3}`, q: 'energy_import' })
    const input = records.map((r) => JSON.stringify(r)).join('\n')
    const ingest = await cli('ingest', '-', '--json', '--batch', '100')
    expect(ingest.code).toBe(0) // empty stdin: nothing to do
    expect(JSON.parse(ingest.stdout)).toEqual({ accepted: 0, rejected: 0, errors: [] })
    const result = await runCli(['--data-dir', node.dataDir, 'ingest', '--json', '--batch', '100'], { input })
    expect(result.code).toBe(0)
    expect(JSON.parse(result.stdout)).toEqual({ accepted: 250, rejected: 0, errors: [] })
    const tail = await cli(
      'tail',
      'oe.tel.meter.*.energy_import',
      '--from-start',
      '--count',
      '250',
      '--timeout',
      '20',
      '--json',
    )
    expect(tail.code).toBe(0)
    const lines = tail.stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line))
    expect(lines).toHaveLength(250)
    expect(lines.every((m) => /^oe\.tel\.meter\.cli-[012]\.energy_import$/.test(m.subject))).toBe(true)
    expect(lines.map((m) => m.data.v)).toEqual(records.map((r) => r.v))
  })

  test('ingest reports rejected records with their index in the input and exits 1', async () => {
    const input = [
      JSON.stringify({ kind: 'meter', rid: 'r1', q: 'power', v: 1, t: Date.now() }),
      '{not json',
      JSON.stringify({ kind: 'meter', rid: 'r1', q: 'volume', v: 1, t: Date.now() }),
    ].join('\n')
    const result = await runCli(['--data-dir', node.dataDir, 'ingest', '--json'], { input })
    expect(result.code).toBe(1)
    const report = JSON.parse(result.stdout)
    expect(report.accepted).toBe(1)
    expect(report.rejected).toBe(2)
    expect(report.errors.map((e: { index: number }) => e.index)).toEqual([1, 2])
    expect(report.errors[1].reason).toContain("unknown quantity 'volume'")
  })

  test('tail without --from-start prints what arrives once it runs, and exits 1 when --count is not reached in time', async () => {
    const post = async (v: number) => {
      const response = await node.fetch('/v1/telemetry', {
        method: 'POST',
        body: JSON.stringify([{ kind: 'meter', rid: 'live-1', q: 'power', v, t: Date.now() }]),
      })
      expect(await response.json()).toMatchObject({ accepted: 1 })
    }
    // Stored before the tail starts: without --from-start it is not printed.
    await post(-1)
    const tail = spawnCli(
      [
        '--data-dir',
        node.dataDir,
        'tail',
        'oe.tel.meter.live-1.>',
        '--count',
        '1000',
        '--timeout',
        '6',
        '--json',
      ],
      { timeoutMs: 20_000 },
    )
    // The tail says nothing once it has subscribed: post readings until it prints one.
    const posted: number[] = []
    await waitFor(
      async () => {
        if (tail.stdout().trim() !== '') return true
        await post(posted.length)
        posted.push(posted.length)
        return false
      },
      6_000,
      'the tail to print a reading',
    )
    const result = await tail.done
    expect(result.code).toBe(1)
    // Every reading posted after it subscribed, in order, up to the last; none from before.
    const printed = result.stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line).data.v as number)
    expect(printed.length).toBeGreaterThan(0)
    expect(printed).toEqual(posted.slice(posted.length - printed.length))
    expect(result.stderr).toContain(`saw ${printed.length} of 1000 messages`)
  })

  test('tail --timeout without --count exits 0', async () => {
    const result = await cli('tail', 'oe.tel.meter.nobody.>', '--timeout', '1')
    expect(result.code).toBe(0)
  })
})

describe('usage', () => {
  test('an unknown option or command exits 2', async () => {
    expect((await cli('status', '--bogus')).code).toBe(2)
    expect((await cli('frobnicate')).code).toBe(2)
    expect((await cli('tail', 'oe.>', '--count', 'many')).code).toBe(2)
    expect((await cli('tail', 'bad..subject')).code).toBe(1)
  })

  test('--help lists the commands and exits 0', async () => {
    const result = await runCli(['--help'])
    expect(result.code).toBe(0)
    for (const command of ['init', 'start', 'status', 'card', 'ingest', 'tail'])
      expect(result.stdout).toContain(command)
  })
})

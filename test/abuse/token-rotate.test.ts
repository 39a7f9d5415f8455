/**
 * `oe-node token rotate` against a real running node: the new admin or ingest token is accepted
 * and the old one refused within a few seconds, with no restart (the same process throughout),
 * and the old token is honoured for exactly the grace period asked for.
 */
import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import {
  cleanupAll,
  type RunningNode,
  runCli,
  startNode,
  telemetry,
  waitFor,
} from '../helpers/node-process.ts'

const CONFIG_INGEST_TOKEN = 'config-ingest-token-0123456789'
let node: RunningNode
let pid: number | undefined

beforeAll(async () => {
  node = await startNode({
    config: `org = "Rotate"\n[api]\ningest_tokens = ["${CONFIG_INGEST_TOKEN}"]\n`,
  })
  pid = node.process.pid
})
afterAll(cleanupAll)

const status = async (path: string, token: string, init: RequestInit = {}): Promise<number> => {
  const response = await fetch(`${node.api}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
  })
  await response.body?.cancel()
  return response.status
}
const adminStatus = (token: string) => status('/v1/status', token)
const ingestStatus = (token: string) =>
  status('/v1/telemetry', token, { method: 'POST', body: JSON.stringify(telemetry(1)) })
const readToken = async (path: string) => (await readFile(path, 'utf8')).trim()

const rotate = async (...args: string[]) => {
  const result = await runCli(['--data-dir', node.dataDir, '--json', 'token', 'rotate', ...args])
  expect(result.stderr).toBe('')
  expect(result.code).toBe(0)
  return JSON.parse(result.stdout) as {
    token: string
    name?: string
    file: string
    created: boolean
    graceSeconds: number
    oldValidUntil: string | null
    node: { url: string; applied: boolean } | null
  }
}

describe('token rotate', () => {
  test('admin: the new token works, the old one gets 401 within seconds, same process', async () => {
    const old = node.token
    expect(await adminStatus(old)).toBe(200)
    const result = await rotate('--admin', '--grace', '0')
    const file = join(node.dataDir, 'admin.token')
    expect(result).toMatchObject({ token: 'admin', file, created: false, oldValidUntil: null })
    expect(result.node).toEqual({ url: node.api, applied: true })
    const fresh = await readToken(file)
    expect(fresh).not.toBe(old)
    expect(fresh.length).toBeGreaterThanOrEqual(32)
    // The token is in the file, never in the output.
    expect(JSON.stringify(result)).not.toContain(fresh)
    expect((await stat(file)).mode & 0o777).toBe(0o600)
    expect(await adminStatus(fresh)).toBe(200)
    await waitFor(async () => (await adminStatus(old)) === 401, 5_000, 'the old admin token refused')
    // The admin token also ingests; the old one no longer does.
    expect(await ingestStatus(old)).toBe(401)
    expect(node.process.pid).toBe(pid)
    expect(node.process.exitCode).toBeNull()
    // The CLI itself follows the new token.
    const cliStatus = await runCli(['--data-dir', node.dataDir, '--json', 'status'])
    expect(cliStatus.code).toBe(0)
    node.token = fresh
  })

  test('admin with a grace period: the old token works until it ends, then 401', async () => {
    const old = node.token
    const result = await rotate('--grace', '3')
    expect(result.token).toBe('admin')
    expect(result.graceSeconds).toBe(3)
    const ends = Date.parse(result.oldValidUntil ?? '')
    expect(ends).toBeGreaterThan(Date.now())
    const fresh = await readToken(result.file)
    expect(await adminStatus(fresh)).toBe(200)
    if (Date.now() < ends - 500) expect(await adminStatus(old)).toBe(200)
    await waitFor(
      async () => (await adminStatus(old)) === 401,
      8_000,
      'the old admin token refused after grace',
    )
    expect(Date.now()).toBeGreaterThanOrEqual(ends)
    const retired = JSON.parse(await readFile(join(node.dataDir, 'tokens', 'retired.json'), 'utf8'))
    // Only a digest of the old token is kept.
    expect(JSON.stringify(retired)).not.toContain(old)
    expect((await stat(join(node.dataDir, 'tokens', 'retired.json'))).mode & 0o777).toBe(0o600)
    node.token = fresh
    expect(node.process.pid).toBe(pid)
  })

  test('ingest: a named token is created, rotated, and the old one refused; config tokens stay', async () => {
    const created = await rotate('--ingest', 'meters')
    const file = join(node.dataDir, 'tokens', 'ingest', 'meters')
    expect(created).toMatchObject({ token: 'ingest', name: 'meters', file, created: true })
    expect(created.node?.applied).toBe(true)
    expect((await stat(file)).mode & 0o777).toBe(0o600)
    const first = await readToken(file)
    expect(await ingestStatus(first)).toBe(200)
    // An ingest token is not an admin token.
    expect(await adminStatus(first)).toBe(401)

    const rotated = await rotate('--ingest', 'meters', '--grace', '0')
    expect(rotated).toMatchObject({ created: false, oldValidUntil: null })
    const second = await readToken(file)
    expect(second).not.toBe(first)
    expect(await ingestStatus(second)).toBe(200)
    await waitFor(async () => (await ingestStatus(first)) === 401, 5_000, 'the old ingest token refused')
    expect(await ingestStatus(CONFIG_INGEST_TOKEN)).toBe(200)
    expect(node.process.pid).toBe(pid)
    expect(node.process.exitCode).toBeNull()
    // Nothing secret in the node's log.
    expect(node.stdout() + node.stderr()).not.toContain(second)
    expect(node.stdout() + node.stderr()).not.toContain(first)
  })

  test('after a restart the rotated tokens are in force: data-dir ingest tokens are read at start', async () => {
    const ingest = await readToken(join(node.dataDir, 'tokens', 'ingest', 'meters'))
    const admin = await readToken(join(node.dataDir, 'admin.token'))
    expect(await node.stop()).toBe(0)
    node = await startNode({ dataDir: node.dataDir })
    pid = node.process.pid
    expect(node.token).toBe(admin)
    expect(await ingestStatus(ingest)).toBe(200)
    expect(await adminStatus(admin)).toBe(200)
    expect(await ingestStatus(CONFIG_INGEST_TOKEN)).toBe(200)
    expect(await ingestStatus('not-a-token-of-this-node-0123')).toBe(401)
  })

  test('usage errors: a bad name, both kinds at once, a bad grace', async () => {
    for (const args of [
      ['--ingest', 'Bad Name'],
      ['--admin', '--ingest', 'x'],
      ['--grace', '-1'],
    ]) {
      const result = await runCli(['--data-dir', node.dataDir, 'token', 'rotate', ...args])
      expect(result.code, args.join(' ')).toBe(2)
      expect(result.stderr).toMatch(/oe-node: /)
    }
  })

  test('plain output names the token, its file and the grace', async () => {
    const result = await runCli(['--data-dir', node.dataDir, 'token', 'rotate', '--ingest', 'meters'])
    expect(result.code).toBe(0)
    expect(result.stdout).toContain("rotated ingest token 'meters'")
    expect(result.stdout).toContain(join(node.dataDir, 'tokens', 'ingest', 'meters'))
    expect(result.stdout).toMatch(/old token accepted until .* \(60 s grace\)/)
    expect(result.stdout).toContain('accepts the new token (no restart)')
  })
})

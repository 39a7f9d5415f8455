/**
 * Key rotation and restarts of the rotating node: a rotation that stopped after it was
 * announced is finished at the next start (the audit log still verifies), a successor key that
 * was never announced is dropped, and a key that a rotation retired (a replica that was not
 * given the new key) is refused at start with a clear reason.
 */
import { chmod, copyFile, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, expect, test } from 'vitest'
import { createIdentityKey, loadIdentity } from '../node/index.ts'
import { api } from './helpers/federation.ts'
import { cleanupAll, runCli, startNode } from './helpers/node-process.ts'

afterEach(cleanupAll)

test('an interrupted rotation is finished at start; an unannounced one is dropped; a retired key is refused', async () => {
  const first = await startNode({ config: 'org = "Solo"\n' })
  const dataDir = first.dataDir
  const keys = join(dataDir, 'keys')
  const rotated = await runCli(['--data-dir', dataDir, '--json', 'key', 'rotate', '--grace', '0'])
  expect(rotated.code).toBe(0)
  const rotation = JSON.parse(rotated.stdout) as {
    from: { peerId: string }
    to: { peerId: string }
    retiredKeyFile: string
    notified: string[]
  }
  expect(rotation.notified).toEqual([])
  expect(await first.stop()).toBe(0)
  const newKey = await readFile(join(keys, 'node.key'), 'utf8')

  // A replica still holding the retired key: refused at start, saying what to do.
  await copyFile(rotation.retiredKeyFile, join(keys, 'node.key'))
  await chmod(join(keys, 'node.key'), 0o600)
  await expect(startNode({ dataDir })).rejects.toThrow(/retired.*copy keys\/node\.key/s)

  // As if the node had stopped after announcing the rotation but before replacing the key file.
  await rm(rotation.retiredKeyFile)
  await writeFile(join(keys, 'node.key.next'), newKey, { mode: 0o600 })
  const second = await startNode({ dataDir })
  expect((await api<{ peerId: string }>(second, 'GET', '/v1/status')).peerId).toBe(rotation.to.peerId)
  expect((await readdir(keys)).sort()).toEqual(['node.key', rotation.retiredKeyFile.split('/').pop()])
  expect((await loadIdentity(rotation.retiredKeyFile)).peerId).toBe(rotation.from.peerId)
  expect(await second.stop()).toBe(0)
  expect((await runCli(['--data-dir', dataDir, 'audit', 'verify'])).code).toBe(0)

  // A successor key that was never announced (a stop right after it was written) is dropped.
  await createIdentityKey(join(keys, 'node.key.next'))
  const third = await startNode({ dataDir })
  expect((await api<{ peerId: string }>(third, 'GET', '/v1/status')).peerId).toBe(rotation.to.peerId)
  expect(await readdir(keys)).not.toContain('node.key.next')
  expect(await third.stop()).toBe(0)
  const verify = await runCli(['--data-dir', dataDir, '--json', 'audit', 'verify'])
  expect(verify.code).toBe(0)
  expect(JSON.parse(verify.stdout)).toMatchObject({ ok: true })
}, 60_000)

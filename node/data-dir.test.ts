import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { chmod, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, describe, expect, test } from 'vitest'
import { cleanupAll, tempDir } from '../test/helpers/node-process.ts'
import { loadConfig } from './config.ts'
import {
  DataDirLock,
  type DataDirPaths,
  dataDirPaths,
  ensureDataDir,
  fileExists,
  loadOrCreateAdminToken,
  readSecretFile,
  resolveDataDir,
} from './data-dir.ts'
import type { DataDirLockedError } from './errors.ts'
import { loadIdentity } from './identity.ts'
import { initDataDir } from './init.ts'

const children: ChildProcess[] = []
const locks: DataDirLock[] = []

afterEach(async () => {
  await Promise.all(locks.splice(0).map((lock) => lock.release()))
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit')
      child.kill('SIGKILL')
      await exited
    }
  }
  await cleanupAll()
})

async function dataDir(): Promise<DataDirPaths> {
  const paths = dataDirPaths(join(await tempDir(), 'data'))
  await ensureDataDir(paths)
  return paths
}

function newLock(paths: DataDirPaths): DataDirLock {
  const lock = new DataDirLock(paths)
  locks.push(lock)
  return lock
}

/** A process that stays alive until the test ends. */
async function liveProcess(): Promise<number> {
  const child = spawn('sleep', ['30'], { stdio: 'ignore' })
  children.push(child)
  await once(child, 'spawn')
  return child.pid!
}

/** The pid of a process that has exited (and been reaped). */
async function deadPid(): Promise<number> {
  const child = spawn('true', [], { stdio: 'ignore' })
  const pid = child.pid!
  await once(child, 'exit')
  return pid
}

async function modeOf(path: string): Promise<number> {
  return (await stat(path)).mode & 0o777
}

async function rejection(promise: Promise<unknown>): Promise<Error> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  )
  expect(error, 'the promise should have been rejected').toBeInstanceOf(Error)
  return error as Error
}

describe('resolveDataDir', () => {
  test('--data-dir wins over $OE_NODE_DATA_DIR, which wins over ~/.local/share/oe-node', () => {
    const env = { OE_NODE_DATA_DIR: '/srv/oe-env', HOME: '/home/ops' }
    expect(resolveDataDir('/srv/oe-flag', env)).toBe('/srv/oe-flag')
    expect(resolveDataDir(undefined, env)).toBe('/srv/oe-env')
    expect(resolveDataDir(undefined, { HOME: '/home/ops' })).toBe('/home/ops/.local/share/oe-node')
  })

  test('a relative --data-dir is made absolute', () => {
    expect(resolveDataDir('gridco', {})).toBe(join(process.cwd(), 'gridco'))
  })
})

describe('DataDirLock', () => {
  test('acquire writes this process’s pid; release removes the file', async () => {
    const paths = await dataDir()
    const lock = newLock(paths)
    await lock.acquire()
    expect((await readFile(paths.lock, 'utf8')).trim()).toBe(String(process.pid))
    await lock.release()
    expect(await fileExists(paths.lock)).toBe(false)
    await lock.release()
    expect(await fileExists(paths.lock)).toBe(false)
  })

  test('a lock held by a live process is refused with DataDirLockedError naming its pid', async () => {
    const paths = await dataDir()
    const holder = await liveProcess()
    await writeFile(paths.lock, `${holder}\n`)
    const error = await rejection(newLock(paths).acquire())
    expect(error.name).toBe('DataDirLockedError')
    expect((error as DataDirLockedError).pid).toBe(holder)
    expect((error as DataDirLockedError).dataDir).toBe(paths.root)
    expect(error.message).toContain(`pid ${holder}`)
    expect(error.message).toContain(paths.root)
    // The holder's lock is left alone.
    expect((await readFile(paths.lock, 'utf8')).trim()).toBe(String(holder))
  })

  test('a second DataDirLock is refused while another process holds the dir, and may take it once that process is gone', async () => {
    const paths = await dataDir()
    const child = spawn('sleep', ['30'], { stdio: 'ignore' })
    children.push(child)
    await once(child, 'spawn')
    await writeFile(paths.lock, `${child.pid}\n`)
    expect((await rejection(newLock(paths).acquire())).name).toBe('DataDirLockedError')
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
    await newLock(paths).acquire()
    expect((await readFile(paths.lock, 'utf8')).trim()).toBe(String(process.pid))
  })

  test('a stale lock (its process exited) is taken over', async () => {
    const paths = await dataDir()
    const stale = await deadPid()
    await writeFile(paths.lock, `${stale}\n`)
    const lock = newLock(paths)
    await lock.acquire()
    expect((await readFile(paths.lock, 'utf8')).trim()).toBe(String(process.pid))
    await lock.release()
    expect(await fileExists(paths.lock)).toBe(false)
  })

  test('a lock file without a pid is taken over', async () => {
    const paths = await dataDir()
    await writeFile(paths.lock, 'garbage\n')
    await newLock(paths).acquire()
    expect((await readFile(paths.lock, 'utf8')).trim()).toBe(String(process.pid))
  })

  test('release by a lock that never acquired leaves the holder’s lock in place', async () => {
    const paths = await dataDir()
    const holder = await liveProcess()
    await writeFile(paths.lock, `${holder}\n`)
    await newLock(paths).release()
    expect((await readFile(paths.lock, 'utf8')).trim()).toBe(String(holder))
  })

  // Regression (fixed): acquire treats a lock holding its own pid as stale (to survive pid reuse after a
  // restart), so a second DataDirLock in the same process (two nodes started in one process on
  // one data dir) silently takes the lock, and the first node's release then deletes it.
  test('a second DataDirLock in the same process is refused while the first holds it', async () => {
    const paths = await dataDir()
    await newLock(paths).acquire()
    const error = await rejection(newLock(paths).acquire())
    expect(error.name).toBe('DataDirLockedError')
  })
})

describe('admin token', () => {
  test('is created 0600 on first use and the same token is returned afterwards', async () => {
    const paths = await dataDir()
    const token = await loadOrCreateAdminToken(paths.adminToken)
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/)
    expect(await modeOf(paths.adminToken)).toBe(0o600)
    expect(await loadOrCreateAdminToken(paths.adminToken)).toBe(token)
    expect(await readSecretFile(paths.adminToken)).toBe(token)
  })

  test('each data dir gets its own token', async () => {
    const first = await loadOrCreateAdminToken((await dataDir()).adminToken)
    const second = await loadOrCreateAdminToken((await dataDir()).adminToken)
    expect(first).not.toBe(second)
  })

  test('a token readable by others is refused with KeyPermissionError', async () => {
    const paths = await dataDir()
    const token = await loadOrCreateAdminToken(paths.adminToken)
    await chmod(paths.adminToken, 0o644)
    const error = await rejection(readSecretFile(paths.adminToken))
    expect(error.name).toBe('KeyPermissionError')
    expect(error.message).toContain(paths.adminToken)
    expect(error.message).not.toContain(token)
    expect((await rejection(loadOrCreateAdminToken(paths.adminToken))).name).toBe('KeyPermissionError')
  })

  test('readSecretFile trims the trailing newline of a hand-written token', async () => {
    const paths = await dataDir()
    await writeFile(paths.adminToken, '  s3cret-token-value \n', { mode: 0o600 })
    expect(await readSecretFile(paths.adminToken)).toBe('s3cret-token-value')
  })
})

describe('ensureDataDir', () => {
  test('a data dir (or one of its folders) others may write to is made 0700, and the change is reported', async () => {
    const root = join(await tempDir(), 'shared')
    const paths = dataDirPaths(root)
    await ensureDataDir(paths)
    await chmod(root, 0o777)
    await chmod(paths.nats, 0o775)
    await chmod(paths.audit, 0o750)
    const fixed = await ensureDataDir(paths)
    expect(await modeOf(root)).toBe(0o700)
    expect(await modeOf(paths.nats)).toBe(0o700)
    // Readable by the group but not writable: the operator's choice, left alone.
    expect(await modeOf(paths.audit)).toBe(0o750)
    expect(fixed).toEqual([
      { path: root, from: 0o777, to: 0o700 },
      { path: paths.nats, from: 0o775, to: 0o700 },
    ])
    expect(await ensureDataDir(paths)).toEqual([])
  })

  test('initDataDir (what start runs) fixes a world-writable data dir too', async () => {
    const root = join(await tempDir(), 'world')
    const paths = dataDirPaths(root)
    await initDataDir(paths, 'Gridco')
    await chmod(root, 0o777)
    await initDataDir(paths, 'Gridco')
    expect(await modeOf(root)).toBe(0o700)
  })
})

describe('initDataDir', () => {
  test('creates keys/, the key, config.toml and admin.token with tight permissions', async () => {
    const paths = dataDirPaths(join(await tempDir(), 'fresh'))
    const result = await initDataDir(paths, 'Gridco')
    expect(result.created).toEqual({ key: true, config: true })
    expect(await modeOf(paths.keys)).toBe(0o700)
    expect(await modeOf(paths.key)).toBe(0o600)
    expect(await modeOf(paths.config)).toBe(0o600)
    expect(await modeOf(paths.adminToken)).toBe(0o600)
    expect((await readdir(paths.root)).sort()).toEqual(
      ['admin.token', 'audit', 'config.toml', 'keys', 'nats', 'plugins'].sort(),
    )
    expect(result.identity.peerId).toBe((await loadIdentity(paths.key)).peerId)
    const config = await loadConfig({ file: paths.config, env: {}, required: true })
    expect(config.org).toBe('Gridco')
  })

  test('running it again changes nothing: same key, same config, same token', async () => {
    const paths = dataDirPaths(join(await tempDir(), 'again'))
    const first = await initDataDir(paths, 'Gridco')
    const config = await readFile(paths.config, 'utf8')
    const token = await readSecretFile(paths.adminToken)
    const second = await initDataDir(paths, 'Other Org')
    expect(second.created).toEqual({ key: false, config: false })
    expect(second.identity.peerId).toBe(first.identity.peerId)
    expect(await readFile(paths.config, 'utf8')).toBe(config)
    expect(await readSecretFile(paths.adminToken)).toBe(token)
  })

  test('does not overwrite a config the operator wrote', async () => {
    const paths = dataDirPaths(await tempDir())
    const mine = 'org = "Mine"\n[api]\nlisten = "127.0.0.1:7999"\n'
    await writeFile(paths.config, mine, { mode: 0o600 })
    const result = await initDataDir(paths, 'Gridco')
    expect(result.created).toEqual({ key: true, config: false })
    expect(await readFile(paths.config, 'utf8')).toBe(mine)
  })

  test('refuses to go on with a world-readable key it did not create', async () => {
    const paths = dataDirPaths(join(await tempDir(), 'leaky'))
    await initDataDir(paths, 'Gridco')
    await chmod(paths.key, 0o644)
    expect((await rejection(initDataDir(paths, 'Gridco'))).name).toBe('KeyPermissionError')
  })
})

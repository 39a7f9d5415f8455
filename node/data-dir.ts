/**
 * The data dir: where a node keeps its key, config, embedded JetStream store, audit log, plugin
 * folders, the URL of its running API and its admin token. One node per data dir (`node.lock`).
 */
import { randomBytes } from 'node:crypto'
import { chmod, mkdir, open, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import { DataDirLockedError, KeyPermissionError } from './errors.ts'

export interface DataDirPaths {
  root: string
  keys: string
  key: string
  config: string
  nats: string
  audit: string
  plugins: string
  api: string
  adminToken: string
  lock: string
}

/** `--data-dir`, else `$OE_NODE_DATA_DIR`, else `~/.local/share/oe-node`. */
export function resolveDataDir(flag?: string, env: Record<string, string | undefined> = process.env): string {
  const chosen = flag ?? env.OE_NODE_DATA_DIR ?? join(env.HOME ?? homedir(), '.local', 'share', 'oe-node')
  return resolve(chosen)
}

export function dataDirPaths(root: string): DataDirPaths {
  return {
    root,
    keys: join(root, 'keys'),
    key: join(root, 'keys', 'node.key'),
    config: join(root, 'config.toml'),
    nats: join(root, 'nats'),
    audit: join(root, 'audit'),
    plugins: join(root, 'plugins'),
    api: join(root, 'api'),
    adminToken: join(root, 'admin.token'),
    lock: join(root, 'node.lock'),
  }
}

/** A folder of the data dir whose mode was tightened. */
export interface DataDirModeFix {
  path: string
  from: number
  to: number
}

/**
 * Create the data dir and its folders (0700). A folder that group or others may write to is made
 * 0700: whoever can write there can swap the config, the nats-server executable the node
 * extracts into `nats/`, or the API file the CLI trusts. The changes are returned, to be logged.
 */
export async function ensureDataDir(paths: DataDirPaths): Promise<DataDirModeFix[]> {
  await mkdir(paths.root, { recursive: true, mode: 0o700 })
  for (const dir of [paths.keys, paths.nats, paths.audit, paths.plugins]) {
    await mkdir(dir, { recursive: true, mode: 0o700 })
  }
  await chmod(paths.keys, 0o700)
  const fixed: DataDirModeFix[] = []
  for (const dir of [paths.root, paths.nats, paths.audit, paths.plugins]) {
    const mode = (await stat(dir)).mode & 0o7777
    if ((mode & 0o022) === 0) continue
    await chmod(dir, 0o700)
    fixed.push({ path: dir, from: mode, to: 0o700 })
  }
  return fixed
}

export async function fileExists(path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch {
    return false
  }
}

/** Create a file with content only if absent; returns whether it was written. */
export async function writeIfAbsent(path: string, content: string, mode: number): Promise<boolean> {
  try {
    const handle = await open(path, 'wx', mode)
    try {
      await handle.writeFile(content)
    } finally {
      await handle.close()
    }
    return true
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw error
  }
}

/** The admin token (created 0600 on first use); refused when others can read it. */
export async function loadOrCreateAdminToken(path: string): Promise<string> {
  await writeIfAbsent(path, `${randomBytes(32).toString('base64url')}\n`, 0o600)
  return readSecretFile(path)
}

export async function readSecretFile(path: string): Promise<string> {
  const info = await stat(path)
  if ((info.mode & 0o077) !== 0) {
    throw new KeyPermissionError(
      `refusing to use ${path}: it is readable by group or others; run chmod 600 on it`,
    )
  }
  return (await readFile(path, 'utf8')).trim()
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** Lock files this process holds: a lock naming our own pid is otherwise taken as stale. */
const heldInThisProcess = new Set<string>()

/**
 * Hold `node.lock` for this process; a live holder is a DataDirLockedError, a dead one is
 * replaced. A lock naming this process's own pid that this process does not hold is stale (pid
 * reuse after a restart is common in containers, where the node is often pid 1).
 */
export class DataDirLock {
  private held = false

  constructor(private readonly paths: DataDirPaths) {}

  async acquire(): Promise<void> {
    if (heldInThisProcess.has(this.paths.lock)) throw new DataDirLockedError(this.paths.root, process.pid)
    for (let attempt = 0; attempt < 3; attempt++) {
      if (await writeIfAbsent(this.paths.lock, `${process.pid}\n`, 0o600)) {
        this.held = true
        heldInThisProcess.add(this.paths.lock)
        return
      }
      const holder = Number((await readFile(this.paths.lock, 'utf8').catch(() => '')).trim())
      if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && isAlive(holder)) {
        throw new DataDirLockedError(this.paths.root, holder)
      }
      // The holder is gone (killed without cleanup): take the lock over.
      await rm(this.paths.lock, { force: true })
    }
    throw new DataDirLockedError(this.paths.root, 0)
  }

  async release(): Promise<void> {
    if (!this.held) return
    this.held = false
    heldInThisProcess.delete(this.paths.lock)
    // Remove the lock only while it still names us.
    const holder = (await readFile(this.paths.lock, 'utf8').catch(() => '')).trim()
    if (holder === String(process.pid)) await rm(this.paths.lock, { force: true })
  }
}

export async function writeApiFile(paths: DataDirPaths, url: string): Promise<void> {
  await writeFile(paths.api, `${url}\n`, { mode: 0o600 })
}

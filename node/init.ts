/**
 * First-run setup of a data dir: folders, identity key, config file and admin token. Nothing
 * that exists is overwritten, so `init` and `start` may both call it.
 */
import { hostname } from 'node:os'
import { checkOrgName, initialConfigText } from './config.ts'
import { type DataDirPaths, ensureDataDir, loadOrCreateAdminToken, writeIfAbsent } from './data-dir.ts'
import { createIdentityKey, loadIdentity, type NodeIdentity } from './identity.ts'

export interface InitResult {
  created: { key: boolean; config: boolean }
  identity: NodeIdentity
  adminToken: string
}

export function defaultOrgName(): string {
  return hostname() || 'oe-node'
}

export async function initDataDir(paths: DataDirPaths, org: string = defaultOrgName()): Promise<InitResult> {
  const name = checkOrgName(org)
  await ensureDataDir(paths)
  const key = await createIdentityKey(paths.key)
  const config = await writeIfAbsent(paths.config, initialConfigText(name), 0o600)
  const adminToken = await loadOrCreateAdminToken(paths.adminToken)
  return { created: { key, config }, identity: await loadIdentity(paths.key), adminToken }
}

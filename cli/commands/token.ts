/**
 * `oe-node token rotate`: replace the admin token or a named ingest token in the data dir. The
 * running node re-reads its token files about every second, so no restart is needed; the old
 * token stays valid for the grace period (its digest is kept in `tokens/retired.json`).
 */
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import type { Command } from 'commander'
import {
  fileExists,
  INGEST_TOKEN_NAME,
  type RetiredToken,
  resolveDataDir,
  tokenDigest,
  tokenFiles,
} from '../../node/index.ts'
import { UsageError } from '../errors.ts'
import { type GlobalOptions, report } from '../output.ts'

/** What `token rotate` reports (`--json`); the token itself is never printed. */
export interface TokenRotateResult {
  /** `admin` or `ingest`. */
  token: 'admin' | 'ingest'
  name?: string
  /** The file holding the new token (mode 0600). */
  file: string
  /** True when there was no such token before (a new ingest token). */
  created: boolean
  graceSeconds: number
  /** ISO 8601: until when the old token is still accepted; null when it is refused at once. */
  oldValidUntil: string | null
  /** The running node, and whether it answered to the new token within a few seconds. */
  node: { url: string; applied: boolean } | null
}

/** Write `content` to `path` (0600) through a temporary file and a rename: never half a token. */
async function writeSecretAtomically(path: string, content: string): Promise<void> {
  const temporary = join(dirname(path), `.${randomBytes(6).toString('hex')}.tmp`)
  try {
    await writeFile(temporary, content, { mode: 0o600, flag: 'wx' })
    await rename(temporary, path)
  } catch (error) {
    await rm(temporary, { force: true })
    throw error
  }
}

async function readRetired(path: string): Promise<RetiredToken[]> {
  const text = await readFile(path, 'utf8').catch(() => undefined)
  if (text === undefined) return []
  try {
    const parsed = JSON.parse(text) as { retired?: unknown }
    return Array.isArray(parsed.retired) ? (parsed.retired as RetiredToken[]) : []
  } catch {
    return []
  }
}

/** Does the running node accept `token` yet? Asks at most for `waitMs`. */
async function nodeAccepts(url: string, kind: 'admin' | 'ingest', token: string, waitMs: number) {
  const deadline = Date.now() + waitMs
  for (;;) {
    const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' }
    const response = await fetch(
      kind === 'admin' ? `${url}/v1/status` : `${url}/v1/telemetry`,
      // An empty batch stores nothing: it only shows that the token is accepted.
      kind === 'admin'
        ? { headers, signal: AbortSignal.timeout(2_000) }
        : { method: 'POST', headers, body: '[]', signal: AbortSignal.timeout(2_000) },
    ).catch(() => undefined)
    await response?.body?.cancel().catch(() => {})
    if (response?.ok) return true
    if (Date.now() >= deadline) return false
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
}

export async function rotateToken(
  dataDir: string,
  options: { ingest?: string; graceSeconds: number },
): Promise<TokenRotateResult> {
  const files = tokenFiles(dataDir)
  const kind = options.ingest === undefined ? 'admin' : 'ingest'
  const name = options.ingest
  if (name !== undefined && !INGEST_TOKEN_NAME.test(name)) {
    throw new UsageError(`'${name}' is not an ingest token name: lower case, digits and dashes, up to 32`)
  }
  if (!(await fileExists(files.adminToken))) {
    throw new UsageError(`${dataDir} has no admin token: run oe-node init first`)
  }
  const file = name === undefined ? files.adminToken : join(files.ingestDir, name)
  await mkdir(dirname(files.retired), { recursive: true, mode: 0o700 })
  if (name !== undefined) await mkdir(files.ingestDir, { recursive: true, mode: 0o700 })
  const old = (await readFile(file, 'utf8').catch(() => undefined))?.trim()
  const label = name === undefined ? 'admin' : `ingest:${name}`
  const now = Date.now()
  const until = options.graceSeconds > 0 && old ? new Date(now + options.graceSeconds * 1000) : undefined

  // The old token's grace is written before the new token, so the node never refuses it early.
  const kept = (await readRetired(files.retired)).filter(
    (entry) =>
      Date.parse(entry.until) > now &&
      // No grace: every earlier token of this name goes at once (a leak is the usual reason).
      (options.graceSeconds > 0 || entry.token !== label),
  )
  if (until && old) kept.push({ token: label, sha256: tokenDigest(old), until: until.toISOString() })
  await writeSecretAtomically(files.retired, `${JSON.stringify({ retired: kept }, null, 2)}\n`)

  const token = randomBytes(32).toString('base64url')
  await writeSecretAtomically(file, `${token}\n`)

  const url = (await readFile(join(dataDir, 'api'), 'utf8').catch(() => ''))?.trim()
  const node = url ? { url, applied: await nodeAccepts(url, kind, token, 5_000) } : null
  return {
    token: kind,
    ...(name !== undefined ? { name } : {}),
    file,
    created: old === undefined,
    graceSeconds: until ? options.graceSeconds : 0,
    oldValidUntil: until ? until.toISOString() : null,
    node,
  }
}

function plain(result: TokenRotateResult): string[] {
  const which = result.token === 'admin' ? 'the admin token' : `ingest token '${result.name}'`
  const lines = [
    `${result.created ? 'created' : 'rotated'} ${which}`,
    `file      ${result.file} (mode 0600; the token is not printed)`,
  ]
  if (!result.created) {
    lines.push(
      result.oldValidUntil
        ? `old token accepted until ${result.oldValidUntil} (${result.graceSeconds} s grace)`
        : 'old token refused from now on',
    )
  }
  if (result.node === null) lines.push('node      not running: it uses the new token when it starts')
  else if (result.node.applied) lines.push(`node      ${result.node.url} accepts the new token (no restart)`)
  else lines.push(`node      ${result.node.url} did not accept the new token within 5 s: check its log`)
  return lines
}

export function registerToken(program: Command): void {
  const token = program.command('token').description('the API tokens kept in the data dir')
  token
    .command('rotate')
    .description(
      'write a new admin token (default) or ingest token; the running node takes it within about a second',
    )
    .option('--admin', 'rotate the admin token (the default)')
    .option('--ingest <name>', 'rotate (or create) the ingest token kept in <data-dir>/tokens/ingest/<name>')
    .option('--grace <seconds>', 'seconds the old token is still accepted (0: refused at once)', '60')
    .addHelpText(
      'after',
      '\nExamples:\n  oe-node token rotate --admin --grace 0\n  oe-node token rotate --ingest meters --json',
    )
    .action(async (options: { admin?: boolean; ingest?: string; grace: string }, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      if (options.admin && options.ingest !== undefined) {
        throw new UsageError('give either --admin or --ingest <name>, not both')
      }
      const graceSeconds = Number(options.grace)
      if (!Number.isSafeInteger(graceSeconds) || graceSeconds < 0 || graceSeconds > 86_400) {
        throw new UsageError('--grace must be whole seconds from 0 to 86400')
      }
      const result = await rotateToken(resolveDataDir(globals.dataDir), {
        graceSeconds,
        ...(options.ingest !== undefined ? { ingest: options.ingest } : {}),
      })
      report(globals, result, plain)
    })
}

import { createHash } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as ed from '@noble/ed25519'
import { afterEach, describe, expect, it } from 'vitest'
import { base64url } from './agreement.ts'
import { AUDIT_FILE, AuditLog, type AuditSigner, verifyAuditLog } from './audit.ts'
import { peerIdOfKey, signSuccession } from './succession.ts'

ed.hashes.sha512 = (message: Uint8Array) => new Uint8Array(createHash('sha512').update(message).digest())

function makeSigner(): AuditSigner {
  const seed = ed.utils.randomSecretKey()
  return { publicKey: ed.getPublicKey(seed), sign: (message) => ed.sign(message, seed) }
}

const dirs: string[] = []
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })))
})

/** A log signed by `first`, handed to `second` (and on to `third` when given), then stopped. */
async function rotatedLog(first: AuditSigner, second: AuditSigner, third?: AuditSigner): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'oe-audit-rotation-'))
  dirs.push(dir)
  const log = new AuditLog({ dir, checkpointEvery: 3 }, { signer: first })
  await log.start()
  for (let n = 0; n < 5; n++) await log.append('test.entry', { n })
  const chain = third ? [first, second, third] : [first, second]
  for (let i = 1; i < chain.length; i++) {
    const [from, to] = [chain[i - 1]!, chain[i]!]
    const statement = signSuccession({ org: 'Gridco', from, to, graceMs: 0 })
    await log.rotateSigner(to, {
      fromPeerId: peerIdOfKey(statement.from),
      toPeerId: peerIdOfKey(statement.to),
      statement,
    })
    for (let n = 0; n < 4; n++) await log.append('test.entry', { n, after: i })
  }
  await log.stop()
  return dir
}

describe('audit log across a key rotation', () => {
  it('verifies: checkpoints by the old key before key.rotated, by the new one after', async () => {
    const [old, next] = [makeSigner(), makeSigner()]
    const dir = await rotatedLog(old, next)
    const result = await verifyAuditLog(dir, next.publicKey)
    expect(result).toMatchObject({ ok: true })
    expect(result.checkpoints).toBeGreaterThanOrEqual(4)
    const lines = (await readFile(join(dir, AUDIT_FILE), 'utf8'))
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line))
    const rotation = lines.findIndex((entry) => entry.type === 'key.rotated')
    // Sealed by the old key right before, and by the new one right after.
    expect(lines[rotation - 1]).toMatchObject({ type: 'checkpoint', data: { key: base64url(old.publicKey) } })
    expect(lines[rotation + 1]).toMatchObject({
      type: 'checkpoint',
      data: { key: base64url(next.publicKey) },
    })
  })

  it('follows two rotations in a row', async () => {
    const [a, b, c] = [makeSigner(), makeSigner(), makeSigner()]
    expect(await verifyAuditLog(await rotatedLog(a, b, c), c.publicKey)).toMatchObject({ ok: true })
  })

  it('fails for a key the log was not handed to (the old one, or a stranger)', async () => {
    const [old, next] = [makeSigner(), makeSigner()]
    const dir = await rotatedLog(old, next)
    for (const key of [old.publicKey, makeSigner().publicKey]) {
      const result = await verifyAuditLog(dir, key)
      expect(result.ok).toBe(false)
      expect(result.firstBad?.reason).toMatch(/hands the log to another key/)
    }
  })

  it('fails at the key.rotated entry when its statement was forged', async () => {
    const [old, next, attacker] = [makeSigner(), makeSigner(), makeSigner()]
    const dir = await rotatedLog(old, next)
    const file = join(dir, AUDIT_FILE)
    const lines = (await readFile(file, 'utf8')).trim().split('\n')
    const index = lines.findIndex((line) => line.includes('"key.rotated"'))
    // Rewriting the hash chain is easy; a valid statement without the old key is not.
    const entries = lines.map((line) => JSON.parse(line))
    const forged = signSuccession({ org: 'Gridco', from: attacker, to: next, graceMs: 0 })
    entries[index].data.statement = { ...forged, from: base64url(old.publicKey) }
    const { auditEntryHash, canonicalJson } = await import('./audit.ts')
    let prev = entries[index - 1].hash
    const out = lines.slice(0, index)
    for (const entry of entries.slice(index)) {
      entry.prev = prev
      entry.hash = auditEntryHash(entry)
      prev = entry.hash
      out.push(
        `{"seq":${entry.seq},"ts":${entry.ts},"type":${JSON.stringify(entry.type)},"data":${canonicalJson(entry.data)},"prev":"${entry.prev}","hash":"${entry.hash}"}`,
      )
    }
    await writeFile(file, `${out.join('\n')}\n`)
    const result = await verifyAuditLog(dir, next.publicKey)
    expect(result.ok).toBe(false)
    expect(result.firstBad).toMatchObject({ line: index + 1 })
    expect(result.firstBad?.reason).toMatch(/not signed by the old key/)
  })

  it('refuses to append key.rotated by hand, and a rotation from a key that does not sign the log', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'oe-audit-rotation-'))
    dirs.push(dir)
    const [signer, other, next] = [makeSigner(), makeSigner(), makeSigner()]
    const log = new AuditLog({ dir }, { signer })
    await log.start()
    await expect(log.append('key.rotated', {})).rejects.toThrow(/reserved/)
    const statement = signSuccession({ org: 'Gridco', from: other, to: next, graceMs: 0 })
    await expect(
      log.rotateSigner(next, {
        fromPeerId: peerIdOfKey(statement.from),
        toPeerId: peerIdOfKey(statement.to),
        statement,
      }),
    ).rejects.toThrow(/does not start from the key that signs this log/)
    await log.stop()
  })
})

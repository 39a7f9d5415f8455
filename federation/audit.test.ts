import { createHash } from 'node:crypto'
import { appendFile, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import * as ed from '@noble/ed25519'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { dataDirPaths, initDataDir, loadIdentity, resolveDataDir } from '../node/index.ts'
import {
  AUDIT_FILE,
  type AuditEntry,
  AuditLog,
  type AuditLogInit,
  type AuditSigner,
  auditEntryHash,
  canonicalJson,
  GENESIS_HASH,
  verifyAuditLog,
} from './audit.ts'

// @noble/ed25519 needs a synchronous SHA-512 (audit.ts sets it too; tests must not rely on import order).
ed.hashes.sha512 = (message: Uint8Array) => new Uint8Array(createHash('sha512').update(message).digest())

function makeSigner(): AuditSigner & { seed: Uint8Array } {
  const seed = ed.utils.randomSecretKey()
  return { seed, publicKey: ed.getPublicKey(seed), sign: (message) => ed.sign(message, seed) }
}

const dirs: string[] = []
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'oe-audit-test-'))
  dirs.push(dir)
  return dir
}
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })))
})

/** A stopped log of `count` entries with `data: {actor, n}`. */
async function writeLog(
  dir: string,
  signer: AuditSigner,
  count: number,
  init: Partial<AuditLogInit> = {},
): Promise<void> {
  const log = new AuditLog({ dir, ...init }, { signer })
  await log.start()
  for (let n = 1; n <= count; n++) await log.append('test.event', { actor: 'alice', n })
  await log.stop()
}

async function readLines(dir: string): Promise<string[]> {
  const text = await readFile(join(dir, AUDIT_FILE), 'utf8')
  return text.split('\n').slice(0, -1)
}

async function writeLines(dir: string, lines: string[]): Promise<void> {
  await writeFile(join(dir, AUDIT_FILE), `${lines.map((line) => `${line}\n`).join('')}`)
}

function parse(line: string): AuditEntry {
  return JSON.parse(line) as AuditEntry
}

/** Serialise like the writer does (fields in order, data canonical). */
function serialise(entry: AuditEntry): string {
  return `{"seq":${entry.seq},"ts":${entry.ts},"type":${JSON.stringify(entry.type)},"data":${canonicalJson(entry.data)},"prev":"${entry.prev}","hash":"${entry.hash}"}`
}

describe('AuditLog', () => {
  it('chains entries from the genesis value and continues the chain after a restart', async () => {
    const dir = await tempDir()
    const signer = makeSigner()
    const first = new AuditLog({ dir }, { signer })
    await first.start()
    const a = await first.append('agreement.proposed', { id: 'abc' })
    const b = await first.append('agreement.accepted', { id: 'abc' })
    expect(a).toMatchObject({ seq: 1, prev: GENESIS_HASH, type: 'agreement.proposed', data: { id: 'abc' } })
    expect(b.seq).toBe(2)
    expect(b.prev).toBe(a.hash)
    expect(a.hash).toBe(auditEntryHash(a))
    await first.stop()

    const second = new AuditLog({ dir }, { signer })
    await second.start()
    // What was there before the restart is still visible to the API/TUI.
    expect(second.recent().map((entry) => entry.seq)).toEqual([1, 2, 3])
    const checkpoint = second.recent().at(-1)!
    expect(checkpoint.type).toBe('checkpoint')
    const c = await second.append('peer.connected', { peer: 'gridco' })
    expect(c.seq).toBe(4)
    expect(c.prev).toBe(checkpoint.hash)
    await second.stop()

    const lines = await readLines(dir)
    expect(lines.map((line) => parse(line).seq)).toEqual([1, 2, 3, 4, 5])
    expect(await verifyAuditLog(dir, signer.publicKey)).toEqual({
      ok: true,
      entries: 5,
      checkpoints: 2,
      receipts: 0,
      lastSeq: 5,
    })
  })

  it('keeps call order for concurrent appends and never interleaves lines', async () => {
    const dir = await tempDir()
    const signer = makeSigner()
    const log = new AuditLog({ dir, checkpointEvery: 25 }, { signer })
    await log.start()
    const padding = 'x'.repeat(8192)
    const entries = await Promise.all(
      Array.from({ length: 200 }, (_, index) => log.append('batch.received', { index, padding })),
    )
    await log.stop()
    const seqs = entries.map((entry) => entry.seq)
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y))
    const lines = await readLines(dir)
    const parsed = lines.map(parse)
    expect(
      parsed.filter((entry) => entry.type === 'batch.received').map((entry) => entry.data.index),
    ).toEqual(Array.from({ length: 200 }, (_, index) => index))
    expect(await verifyAuditLog(dir, signer.publicKey)).toMatchObject({
      ok: true,
      entries: 208,
      checkpoints: 8,
    })
  })

  it('writes signed checkpoints every N entries and on stop', async () => {
    const dir = await tempDir()
    const signer = makeSigner()
    await writeLog(dir, signer, 7, { checkpointEvery: 3 })
    const entries = (await readLines(dir)).map(parse)
    expect(entries.map((entry) => entry.type)).toEqual([
      'test.event',
      'test.event',
      'test.event',
      'checkpoint',
      'test.event',
      'test.event',
      'test.event',
      'checkpoint',
      'test.event',
      'checkpoint',
    ])
    for (const checkpoint of entries.filter((entry) => entry.type === 'checkpoint')) {
      const before = entries[checkpoint.seq - 2]!
      expect(checkpoint.data).toMatchObject({
        upTo: before.seq,
        hash: before.hash,
        key: Buffer.from(signer.publicKey).toString('base64url'),
      })
      // The signature is over the UTF-8 bytes of the hash's hex text.
      const sig = Buffer.from(checkpoint.data.sig as string, 'base64url')
      expect(ed.verify(sig, new TextEncoder().encode(before.hash), signer.publicKey)).toBe(true)
    }
    expect(await verifyAuditLog(dir, signer.publicKey)).toEqual({
      ok: true,
      entries: 10,
      checkpoints: 3,
      receipts: 0,
      lastSeq: 10,
    })
  })

  it('writes a checkpoint on the interval when something changed, and none when nothing did', async () => {
    const dir = await tempDir()
    const signer = makeSigner()
    const log = new AuditLog({ dir, checkpointIntervalMs: 20 }, { signer })
    await log.start()
    await log.append('test.event', { n: 1 })
    await vi.waitFor(() => expect(log.recent().at(-1)?.type).toBe('checkpoint'), { timeout: 5000 })
    await log.stop()
    expect((await readLines(dir)).map((line) => parse(line).type)).toEqual(['test.event', 'checkpoint'])

    // A restart with nothing appended leaves the file as it was.
    const before = await readFile(join(dir, AUDIT_FILE))
    const again = new AuditLog({ dir, checkpointIntervalMs: 20 }, { signer })
    await again.start()
    await new Promise((resolve) => setTimeout(resolve, 60))
    await again.stop()
    expect(await readFile(join(dir, AUDIT_FILE))).toEqual(before)
  })

  it('after a restart shows the newest 500 entries and signs entries a crash left unsigned', async () => {
    const dir = await tempDir()
    const signer = makeSigner()
    await writeLog(dir, signer, 600, { checkpointEvery: 1000 })
    // A crash before the final checkpoint: drop it.
    const lines = await readLines(dir)
    await writeLines(dir, lines.slice(0, -1))

    const log = new AuditLog({ dir, checkpointEvery: 1000 }, { signer })
    await log.start()
    const recent = log.recent()
    expect(recent).toHaveLength(500)
    expect(recent[0]!.seq).toBe(101)
    expect(recent.at(-1)!.seq).toBe(600)
    expect(log.recent(2).map((entry) => entry.seq)).toEqual([599, 600])
    await log.stop()
    const after = (await readLines(dir)).map(parse)
    expect(after.at(-1)).toMatchObject({ seq: 601, type: 'checkpoint', data: { upTo: 600 } })
    expect(await verifyAuditLog(dir, signer.publicKey)).toMatchObject({
      ok: true,
      entries: 601,
      checkpoints: 1,
    })
  })

  it('keeps entries when a checkpoint cannot be signed, and warns', async () => {
    const dir = await tempDir()
    const signer = makeSigner()
    const warn = vi.fn()
    const failing: AuditSigner = {
      publicKey: signer.publicKey,
      sign: () => {
        throw new Error('hardware key unplugged')
      },
    }
    const log = new AuditLog({ dir, checkpointEvery: 2 }, { signer: failing, logger: { warn } })
    await log.start()
    for (let n = 0; n < 3; n++) await log.append('test.event', { n })
    await Promise.all([log.stop(), log.stop()])
    expect(warn).toHaveBeenCalledWith(
      expect.objectContaining({ err: expect.any(Error) }),
      'audit checkpoint failed',
    )
    expect(await verifyAuditLog(dir, signer.publicKey)).toEqual({
      ok: true,
      entries: 3,
      checkpoints: 0,
      receipts: 0,
      lastSeq: 3,
    })
  })

  it('creates the dir 0700 and the file 0600', async () => {
    const dir = join(await tempDir(), 'audit')
    await writeLog(dir, makeSigner(), 1)
    expect((await stat(dir)).mode & 0o777).toBe(0o700)
    expect((await stat(join(dir, AUDIT_FILE))).mode & 0o777).toBe(0o600)
  })

  it('refuses misuse with AuditError', async () => {
    const dir = await tempDir()
    const signer = makeSigner()
    const log = new AuditLog({ dir }, { signer })
    await expect(log.append('test.event', {})).rejects.toMatchObject({ name: 'AuditError' })
    await log.start()
    await log.start()
    await expect(log.append('checkpoint', {})).rejects.toMatchObject({ name: 'AuditError' })
    await expect(log.append('Not A Type', {})).rejects.toMatchObject({ name: 'AuditError' })
    await expect(log.append('test.event', { big: 1n })).rejects.toMatchObject({ name: 'AuditError' })
    // Fields JSON drops are dropped before hashing, so the entry still verifies.
    const entry = await log.append('test.event', { gone: undefined, kept: 1 })
    expect(entry.data).toEqual({ kept: 1 })
    await log.stop()
    await log.stop()
    expect((await verifyAuditLog(dir, signer.publicKey)).ok).toBe(true)
  })
})

describe('verifyAuditLog', () => {
  it('accepts a missing or empty log with 0 entries', async () => {
    const dir = await tempDir()
    const key = makeSigner().publicKey
    expect(await verifyAuditLog(join(dir, 'nothing-here'), key)).toEqual({
      ok: true,
      entries: 0,
      checkpoints: 0,
      receipts: 0,
      lastSeq: 0,
    })
    await writeFile(join(dir, AUDIT_FILE), '')
    expect(await verifyAuditLog(dir, key)).toMatchObject({ ok: true, entries: 0 })
  })

  it('stops when its signal aborts', async () => {
    const dir = await tempDir()
    const signer = makeSigner()
    await writeLog(dir, signer, 3)
    await expect(verifyAuditLog(dir, signer.publicKey, { signal: AbortSignal.abort() })).rejects.toThrow()
  })

  describe('names the first bad entry', () => {
    async function tampered(
      edit: (lines: string[]) => string[],
      init: Partial<AuditLogInit> = { checkpointEvery: 100 },
    ) {
      const dir = await tempDir()
      const signer = makeSigner()
      await writeLog(dir, signer, 12, init)
      await writeLines(dir, edit(await readLines(dir)))
      return { result: await verifyAuditLog(dir, signer.publicKey), file: join(dir, AUDIT_FILE) }
    }

    it('an edited data field', async () => {
      const { result, file } = await tampered((lines) => {
        lines[4] = lines[4]!.replace('"actor":"alice"', '"actor":"mallory"')
        return lines
      })
      expect(result).toMatchObject({
        ok: false,
        entries: 4,
        lastSeq: 4,
        firstBad: { file, line: 5, seq: 5, reason: 'hash does not match content' },
      })
    })

    it('an edited entry whose hash was recomputed: caught at the next link', async () => {
      const { result } = await tampered((lines) => {
        const entry = parse(lines[4]!)
        entry.data.actor = 'mallory'
        entry.hash = auditEntryHash(entry)
        lines[4] = serialise(entry)
        return lines
      })
      expect(result.firstBad).toMatchObject({
        line: 6,
        seq: 6,
        reason: 'prev does not match the hash of seq 5',
      })
    })

    it('a rewritten chain after an edit: caught at the signed checkpoint', async () => {
      const { result } = await tampered(
        (lines) => {
          const entries = lines.map(parse)
          entries[4]!.data.actor = 'mallory'
          for (let index = 4; index < entries.length; index++) {
            const entry = entries[index]!
            if (index > 0) entry.prev = entries[index - 1]!.hash
            if (entry.type === 'checkpoint') entry.data.hash = entry.prev
            entry.hash = auditEntryHash(entry)
          }
          return entries.map(serialise)
        },
        { checkpointEvery: 10 },
      )
      expect(result.firstBad).toMatchObject({ line: 11, seq: 11, reason: 'checkpoint signature invalid' })
    })

    it('a deleted line', async () => {
      const { result } = await tampered((lines) => lines.filter((_, index) => index !== 4))
      expect(result.firstBad).toMatchObject({ line: 5, seq: 6, reason: 'seq 6 follows 4' })
    })

    it('two swapped lines', async () => {
      const { result } = await tampered((lines) => {
        ;[lines[4], lines[5]] = [lines[5]!, lines[4]!]
        return lines
      })
      expect(result.firstBad).toMatchObject({ line: 5, seq: 6, reason: 'seq 6 follows 4' })
    })

    it('an edited hash', async () => {
      const { result } = await tampered((lines) => {
        const entry = parse(lines[4]!)
        entry.hash = `${entry.hash.startsWith('0') ? '1' : '0'}${entry.hash.slice(1)}`
        lines[4] = serialise(entry)
        return lines
      })
      expect(result.firstBad).toMatchObject({ line: 5, seq: 5, reason: 'hash does not match content' })
    })

    it('a truncated middle line', async () => {
      const { result } = await tampered((lines) => {
        lines[4] = lines[4]!.slice(0, Math.floor(lines[4]!.length / 2))
        return lines
      })
      expect(result.firstBad).toMatchObject({ line: 5, seq: 5, reason: 'not JSON' })
    })

    it('a torn (unterminated) last line', async () => {
      const dir = await tempDir()
      const signer = makeSigner()
      await writeLog(dir, signer, 3)
      await appendFile(join(dir, AUDIT_FILE), '{"seq":5,"ts":17')
      expect((await verifyAuditLog(dir, signer.publicKey)).firstBad).toMatchObject({
        line: 5,
        seq: 5,
        reason: expect.stringContaining('last line is incomplete'),
      })
    })

    it('a checkpoint signed by another key', async () => {
      const dir = await tempDir()
      const node = makeSigner()
      const other = makeSigner()
      await writeLog(dir, other, 12, { checkpointEvery: 5 })
      expect((await verifyAuditLog(dir, node.publicKey)).firstBad).toMatchObject({
        line: 6,
        seq: 6,
        reason: "checkpoint is signed by another key than this node's",
      })
    })

    it("a checkpoint that names this node's key but was signed by another", async () => {
      const dir = await tempDir()
      const node = makeSigner()
      const other = makeSigner()
      await writeLog(dir, { publicKey: node.publicKey, sign: other.sign }, 12, { checkpointEvery: 5 })
      expect((await verifyAuditLog(dir, node.publicKey)).firstBad).toMatchObject({
        line: 6,
        seq: 6,
        reason: 'checkpoint signature invalid',
      })
    })
  })

  it('detects every random single-byte corruption (seeded)', async () => {
    const dir = await tempDir()
    const signer = makeSigner()
    const log = new AuditLog({ dir, checkpointEvery: 8 }, { signer })
    await log.start()
    for (let n = 0; n < 20; n++) {
      await log.append('test.event', { n, site: 'Zürich ⚡', nested: { list: [n, -n / 3, null, true] } })
    }
    await log.stop()
    const file = join(dir, AUDIT_FILE)
    const original = await readFile(file)
    expect((await verifyAuditLog(dir, signer.publicKey)).ok).toBe(true)

    // mulberry32: small, seeded, good enough to pick positions and bytes.
    let state = 0x5eed
    const random = () => {
      state = (state + 0x6d2b79f5) | 0
      let t = Math.imul(state ^ (state >>> 15), 1 | state)
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296
    }
    for (let iteration = 0; iteration < 300; iteration++) {
      const corrupted = Buffer.from(original)
      const position = Math.floor(random() * corrupted.length)
      const byte = (corrupted[position]! + 1 + Math.floor(random() * 255)) % 256
      corrupted[position] = byte
      await writeFile(file, corrupted)
      const result = await verifyAuditLog(dir, signer.publicKey)
      if (result.ok) throw new Error(`byte ${position} set to ${byte} went unnoticed`)
      expect(result.firstBad?.line).toBeGreaterThan(0)
    }
  })
})

describe('transfer receipts, checked against the provider key', () => {
  const provider = makeSigner()
  const stranger = makeSigner()
  const sha = (...parts: Uint8Array[]) => {
    const hash = createHash('sha256')
    for (const part of parts) hash.update(part)
    return new Uint8Array(hash.digest())
  }
  const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex')
  const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64url')

  /** Receipts as a consumer writes them, for batches 1…n of one session, `per` batches each. */
  function receipts(n: number, per: number, signer = provider) {
    const out: Record<string, unknown>[] = []
    let chain = new Uint8Array(32)
    for (let first = 1; first <= n; first += per) {
      const prev = hex(chain)
      let digest = new Uint8Array(32)
      const last = Math.min(n, first + per - 1)
      for (let batch = first; batch <= last; batch++) {
        digest = sha(new TextEncoder().encode(`batch body ${batch}`))
        chain = sha(chain, digest)
      }
      out.push({
        id: 'a'.repeat(64),
        peer: 'prov',
        batches: [first, last],
        records: 10 * (last - first + 1),
        bytes: 300 * (last - first + 1),
        prev,
        chain: hex(chain),
        lastDigest: hex(digest),
        lastSig: b64(signer.sign(digest)),
      })
    }
    return out
  }

  async function logOf(entries: Record<string, unknown>[], peerAdded = true) {
    const dir = await tempDir()
    const node = makeSigner()
    const log = new AuditLog({ dir }, { signer: node })
    await log.start()
    const peerId = peerIdFromPublicKey(publicKeyFromRaw(provider.publicKey)).toString()
    if (peerAdded) await log.append('peer.added', { peer: 'prov', org: 'Provider', peerId })
    for (const data of entries) await log.append('transfer.received', data)
    await log.stop()
    return verifyAuditLog(dir, node.publicKey)
  }

  it('verifies receipts of one batch and of several, across two sessions', async () => {
    const result = await logOf([...receipts(3, 1), ...receipts(7, 3)])
    expect(result).toMatchObject({ ok: true, receipts: 3 + 3 })
  })

  it('refuses a receipt whose signature is not the provider key', async () => {
    const result = await logOf([...receipts(2, 1), ...receipts(1, 1, stranger)])
    expect(result.ok).toBe(false)
    expect(result.firstBad?.reason).toMatch(/signature does not verify against prov's key/)
    expect(result.receipts).toBe(2)
  })

  it('refuses a receipt that does not continue the chain', async () => {
    const [first, , third] = receipts(3, 1)
    const result = await logOf([first!, third!])
    expect(result.firstBad?.reason).toMatch(/does not continue the chain/)
  })

  it('refuses a one-batch receipt whose chain is not sha256(prev ‖ digest)', async () => {
    const [first] = receipts(1, 1)
    const result = await logOf([{ ...first!, chain: 'f'.repeat(64) }])
    expect(result.firstBad?.reason).toMatch(/chain does not match its batch digest/)
  })

  it('refuses a receipt from a peer the log never added, and one with missing fields', async () => {
    expect((await logOf(receipts(1, 1), false)).firstBad?.reason).toMatch(/no peer.added entry/)
    const [first] = receipts(1, 1)
    const { bytes: _bytes, ...withoutBytes } = first!
    expect((await logOf([withoutBytes])).firstBad?.reason).toMatch(/transfer receipt is not/)
  })
})

describe('recovery at start', () => {
  it('cuts off a torn last line, notes it in the log, and continues the chain', async () => {
    const dir = await tempDir()
    const signer = makeSigner()
    await writeLog(dir, signer, 4)
    const file = join(dir, AUDIT_FILE)
    const whole = (await stat(file)).size
    // A crash in the middle of writing the next entry.
    const torn = '{"seq":6,"ts":1700000000000,"type":"test.ev'
    await appendFile(file, torn)
    const warn = vi.fn()
    const log = new AuditLog({ dir }, { signer, logger: { warn } })
    await log.start()
    const recovered = log.recent().at(-1)!
    expect(recovered).toMatchObject({
      seq: 6,
      type: 'audit.recovered',
      data: { reason: 'torn last line', offset: whole, truncatedBytes: Buffer.byteLength(torn) },
    })
    expect(warn).toHaveBeenCalledOnce()
    await log.append('test.event', { n: 5 })
    await log.stop()
    expect(await verifyAuditLog(dir, signer.publicKey)).toEqual({
      ok: true,
      entries: 8,
      checkpoints: 2,
      receipts: 0,
      lastSeq: 8,
    })
  })

  it('recovers a log that is nothing but a torn first line', async () => {
    const dir = await tempDir()
    const signer = makeSigner()
    await writeFile(join(dir, AUDIT_FILE), '{"seq":1,"ts":17', { mode: 0o600 })
    const log = new AuditLog({ dir }, { signer })
    await log.start()
    expect(log.recent()).toMatchObject([{ seq: 1, prev: GENESIS_HASH, type: 'audit.recovered' }])
    await log.stop()
    expect(await verifyAuditLog(dir, signer.publicKey)).toMatchObject({ ok: true, entries: 2 })
  })

  it('refuses to continue after a damaged whole last line', async () => {
    const dir = await tempDir()
    const signer = makeSigner()
    await writeLog(dir, signer, 3)
    const lines = await readLines(dir)
    lines[lines.length - 1] = lines.at(-1)!.replace('"checkpoint"', '"checkpoinT"')
    await writeLines(dir, lines)
    const log = new AuditLog({ dir }, { signer })
    await expect(log.start()).rejects.toMatchObject({ name: 'AuditError' })
    await log.stop()
  })
})

describe('as `oe-node audit verify` runs it', () => {
  it("verifies the data dir's audit log with the node's own key", async () => {
    const root = await tempDir()
    const paths = dataDirPaths(resolveDataDir(root))
    const { identity } = await initDataDir(paths, 'Test Org')
    const log = new AuditLog({ dir: paths.audit, checkpointEvery: 4 }, { signer: identity })
    await log.start()
    for (let n = 0; n < 6; n++) await log.append('agreement.proposed', { id: `a${n}` })
    await log.stop()

    // The CLI's steps: resolve the data dir, load the identity, verify.
    const cliPaths = dataDirPaths(resolveDataDir(root))
    const cliIdentity = await loadIdentity(cliPaths.key)
    const result = await verifyAuditLog(cliPaths.audit, cliIdentity.publicKey)
    expect(result).toEqual({ ok: true, entries: 8, checkpoints: 2, receipts: 0, lastSeq: 8 })
    expect(JSON.parse(JSON.stringify(result))).toEqual(result)

    const lines = await readLines(cliPaths.audit)
    lines[2] = lines[2]!.replace('"id":"a2"', '"id":"a9"')
    await writeLines(cliPaths.audit, lines)
    expect(await verifyAuditLog(cliPaths.audit, cliIdentity.publicKey)).toMatchObject({
      ok: false,
      firstBad: {
        file: join(cliPaths.audit, AUDIT_FILE),
        line: 3,
        seq: 3,
        reason: 'hash does not match content',
      },
    })
  })
})

/**
 * The node's audit log (ARCHITECTURE §6 "Audit"): an append-only, hash-chained NDJSON file
 * `<dir>/audit.log` with checkpoints signed by the node key, and an offline verifier.
 *
 * One entry per line, `\n`-terminated, UTF-8, fields in this order and nothing else:
 *
 *   {"seq":1,"ts":1700000000000,"type":"agreement.accepted","data":{…},"prev":"000…0","hash":"9f…"}
 *
 * - `seq`: 1, 2, 3, … with no gaps; `ts`: milliseconds since the epoch (integer).
 * - `data`: a JSON object, written in canonical form (see `canonicalJson`).
 * - `prev`: the `hash` of the entry before; for seq 1 the genesis value, 64 × "0".
 * - `hash`: lowercase hex SHA-256 of the UTF-8 bytes of
 *   `canonicalJson({seq, ts, type, data, prev})`, i.e. `{"data":…,"prev":…,"seq":…,"ts":…,"type":…}`.
 *   Canonical JSON: object keys sorted recursively by UTF-16 code units (JavaScript's default
 *   sort), no whitespace, strings and numbers exactly as ECMAScript `JSON.stringify` writes them.
 * - A line must be byte-for-byte the serialisation above; anything else is reported, so a changed
 *   byte never goes unnoticed even when it would parse to the same values.
 *
 * Checkpoints are entries of type `checkpoint` with
 * `data = {upTo, hash, key, sig}`: `upTo` is the seq of the entry just before, `hash` its hash
 * (equal to the checkpoint's `prev`), `key` the node's raw 32-byte ed25519 public key and `sig`
 * the ed25519 signature over the UTF-8 bytes of `hash` as 64 lowercase hex characters, both
 * base64url without padding. The hex text, not the raw digest, is signed so that a checkpoint
 * signature (64-byte message) can never pass for a signature over a 32-byte agreement id or batch
 * hash made with the same key. Checkpoints are written every `checkpointEvery` entries, every
 * `checkpointIntervalMs` when something was appended since the last one, and on stop.
 *
 * Key rotation: an entry of type `key.rotated` with `data = {fromPeerId, toPeerId, statement}`
 * hands the log from one node key to the next. `statement` is the succession statement
 * (`succession.ts`), signed by both keys. The old key checkpoints everything before it, the new
 * key everything after. The verifier starts from the `from` key of the first rotation (or the
 * node's key when there is none), follows each rotation, and requires the chain to end at the
 * node's current key.
 *
 * @example
 * const audit = new AuditLog({ dir: paths.audit }, { signer: identity, logger })
 * await audit.start()
 * await audit.append('connection.refused', { peer })
 * await audit.stop()
 * const result = await verifyAuditLog(paths.audit, identity.publicKey)
 */
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { chmod, type FileHandle, mkdir, open } from 'node:fs/promises'
import { join } from 'node:path'
import { peerIdFromString } from '@libp2p/peer-id'
import * as ed from '@noble/ed25519'
import { type KeySuccession, parseSuccession } from './succession.ts'

// @noble/ed25519 needs a synchronous SHA-512 for sign/verify; the runtime's is exact and fast.
ed.hashes.sha512 = (message: Uint8Array) => new Uint8Array(createHash('sha512').update(message).digest())

/** The audit log cannot be opened, continued or written. */
export class AuditError extends Error {
  override name = 'AuditError'
}

export interface AuditSigner {
  publicKey: Uint8Array
  sign(message: Uint8Array): Uint8Array
}

export interface AuditLogInit {
  dir: string
  /** Write a signed checkpoint after this many entries (default 100). */
  checkpointEvery?: number
  /** Write a signed checkpoint this often when something was appended since the last (default 60 s). */
  checkpointIntervalMs?: number
}

export interface AuditLogComponents {
  signer: AuditSigner
  logger?: { warn(obj: object, msg?: string): void }
}

export interface AuditEntry {
  seq: number
  ts: number
  type: string
  data: Record<string, unknown>
  prev: string
  hash: string
}

export interface AuditVerifyResult {
  ok: boolean
  /** Entries (checkpoints included) that verified before the first bad one, or in all. */
  entries: number
  checkpoints: number
  /** Transfer receipts whose provider signature (and chain, where it can be recomputed) verified. */
  receipts: number
  /** Seq of the last entry that verified; 0 when none did. */
  lastSeq: number
  firstBad?: { file: string; line: number; seq?: number; reason: string }
}

/** The file name inside the audit dir. */
export const AUDIT_FILE = 'audit.log'
/** `prev` of seq 1. */
export const GENESIS_HASH = '0'.repeat(64)
export const CHECKPOINT_TYPE = 'checkpoint'
/** Written at start when a torn last line (a write cut short by a crash) was cut off. */
export const RECOVERED_TYPE = 'audit.recovered'
/** Written by `rotateSigner`: the node key changed (see the header). */
export const KEY_ROTATED_TYPE = 'key.rotated'
/** Written by a partner that verified a peer's succession statement. */
export const PEER_KEY_SUCCEEDED_TYPE = 'peer.key_succeeded'

const DEFAULT_CHECKPOINT_EVERY = 100
const DEFAULT_CHECKPOINT_INTERVAL_MS = 60_000
/** How many entries `recent()` keeps for the API and TUI. */
const RECENT_LIMIT = 500
/** One entry may not exceed this; audit entries are small facts, not payloads. */
const MAX_LINE_BYTES = 1 << 20
const TYPE_PATTERN = /^[a-z][a-z0-9._-]{0,63}$/
const HEX_HASH = /^[0-9a-f]{64}$/
const ENTRY_KEYS = ['data', 'hash', 'prev', 'seq', 'ts', 'type']
const CHECKPOINT_KEYS = ['hash', 'key', 'sig', 'upTo']
const NEWLINE = 0x0a

/**
 * Canonical JSON: object keys sorted recursively, no whitespace. Only JSON values are accepted
 * (plain objects, arrays, strings, finite numbers, booleans, null).
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new AuditError('audit data holds a number that is not finite')
    return JSON.stringify(value)
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (typeof value === 'object') {
    const record = value as Record<string, unknown>
    const keys = Object.keys(record).sort()
    return `{${keys.map((key) => `${JSON.stringify(key)}:${canonicalJson(record[key])}`).join(',')}}`
  }
  throw new AuditError(`audit data holds a ${typeof value}, which JSON cannot represent`)
}

/** Hex SHA-256 of the canonical form of everything but the hash. */
export function auditEntryHash(entry: Omit<AuditEntry, 'hash'>): string {
  const body = canonicalJson({
    seq: entry.seq,
    ts: entry.ts,
    type: entry.type,
    data: entry.data,
    prev: entry.prev,
  })
  return createHash('sha256').update(body, 'utf8').digest('hex')
}

/** The exact line (without its `\n`) an entry is stored as. */
function serialiseEntry(entry: AuditEntry): string {
  return `{"seq":${entry.seq},"ts":${entry.ts},"type":${JSON.stringify(entry.type)},"data":${canonicalJson(entry.data)},"prev":"${entry.prev}","hash":"${entry.hash}"}`
}

/** The message a checkpoint signs: the UTF-8 bytes of the hash's hex text. */
function checkpointMessage(hashHex: string): Uint8Array {
  return new TextEncoder().encode(hashHex)
}

function base64url(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64url')
}

/** Strict base64url: Buffer's decoder skips junk, so require that re-encoding gives the same text. */
function fromBase64url(text: string): Uint8Array | undefined {
  const bytes = Buffer.from(text, 'base64url')
  return bytes.toString('base64url') === text ? new Uint8Array(bytes) : undefined
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object') {
    for (const inner of Object.values(value)) deepFreeze(inner)
    Object.freeze(value)
  }
  return value
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}

function sameKeys(record: Record<string, unknown>, expected: readonly string[]): boolean {
  const keys = Object.keys(record).sort()
  return keys.length === expected.length && keys.every((key, index) => key === expected[index])
}

/** Why a parsed line is not an audit entry, or undefined when its shape is right. */
function shapeProblem(value: unknown): string | undefined {
  if (!isPlainObject(value)) return 'not an audit entry: not a JSON object'
  if (!sameKeys(value, ENTRY_KEYS)) {
    return `not an audit entry: fields are ${Object.keys(value).join(',') || 'none'}, expected seq,ts,type,data,prev,hash`
  }
  if (!Number.isSafeInteger(value.seq) || (value.seq as number) < 1)
    return 'not an audit entry: seq is not a positive integer'
  if (!Number.isSafeInteger(value.ts) || (value.ts as number) < 0)
    return 'not an audit entry: ts is not a timestamp'
  if (typeof value.type !== 'string' || value.type === '') return 'not an audit entry: type is not a string'
  if (!isPlainObject(value.data)) return 'not an audit entry: data is not an object'
  if (typeof value.prev !== 'string' || !HEX_HASH.test(value.prev))
    return 'not an audit entry: prev is not a hex SHA-256'
  if (typeof value.hash !== 'string' || !HEX_HASH.test(value.hash))
    return 'not an audit entry: hash is not a hex SHA-256'
  return undefined
}

type ParsedLine = { entry: AuditEntry } | { problem: string; seq?: number }

const strictUtf8 = new TextDecoder('utf-8', { fatal: true })

/**
 * Parse one stored line (without `\n`) and check everything that depends on the line alone:
 * UTF-8, JSON, shape, canonical bytes, and that the hash matches the content.
 */
function parseLine(bytes: Uint8Array): ParsedLine {
  let text: string
  try {
    text = strictUtf8.decode(bytes)
  } catch {
    return { problem: 'not valid UTF-8', ...claimedSeq(bytes) }
  }
  if (text === '') return { problem: 'empty line' }
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return { problem: 'not JSON', ...claimedSeq(bytes) }
  }
  const problem = shapeProblem(value)
  if (problem !== undefined) return { problem, ...claimedSeq(bytes) }
  const entry = value as AuditEntry
  let canonical: string
  try {
    canonical = serialiseEntry(entry)
  } catch (error) {
    // JSON.parse reads 1e999 as Infinity, which no writer could have produced.
    return { problem: `not an audit entry: ${(error as Error).message}`, seq: entry.seq }
  }
  if (canonical !== text) return { problem: 'not in canonical form', seq: entry.seq }
  return { entry }
}

/** The seq a damaged line still shows at its start, so a report can name the entry. */
function claimedSeq(bytes: Uint8Array): { seq?: number } {
  const match = /^\{"seq":(\d{1,15}),/.exec(Buffer.from(bytes.subarray(0, 32)).toString('latin1'))
  return match ? { seq: Number(match[1]) } : {}
}

/** Split a buffer into complete `\n`-terminated lines; the rest (no `\n` yet) is returned apart. */
function splitLines(buffer: Buffer): { lines: Buffer[]; rest: Buffer } {
  const lines: Buffer[] = []
  let start = 0
  for (let index = buffer.indexOf(NEWLINE); index !== -1; index = buffer.indexOf(NEWLINE, start)) {
    lines.push(buffer.subarray(start, index))
    start = index + 1
  }
  return { lines, rest: buffer.subarray(start) }
}

type LogState = 'stopped' | 'starting' | 'started' | 'stopping' | 'failed'

/**
 * The writer. Appends are serialised through one queue, so entries keep call order and lines
 * never interleave. Each entry is one `write` on a file opened for appending; the file is
 * fsynced at checkpoints and on stop (an entry lost in a power cut after its append resolved is
 * the price of not syncing every line; the chain still verifies up to the cut).
 */
export class AuditLog {
  private readonly dir: string
  private readonly file: string
  private readonly checkpointEvery: number
  private readonly checkpointIntervalMs: number
  private signer: AuditSigner
  private readonly logger: AuditLogComponents['logger']
  private state: LogState = 'stopped'
  private startPromise: Promise<void> | undefined
  private stopPromise: Promise<void> | undefined
  private handle: FileHandle | undefined
  private timer: ReturnType<typeof setInterval> | undefined
  private queue: Promise<unknown> = Promise.resolve()
  private lastSeq = 0
  private lastHash = GENESIS_HASH
  /** Bytes of the file known to hold whole entries; a failed write is cut back to this. */
  private size = 0
  /** Entries (not checkpoints) appended since the last checkpoint. */
  private sinceCheckpoint = 0
  private readonly recentEntries: AuditEntry[] = []

  constructor(init: AuditLogInit, components: AuditLogComponents) {
    this.dir = init.dir
    this.file = join(init.dir, AUDIT_FILE)
    this.checkpointEvery = init.checkpointEvery ?? DEFAULT_CHECKPOINT_EVERY
    this.checkpointIntervalMs = init.checkpointIntervalMs ?? DEFAULT_CHECKPOINT_INTERVAL_MS
    if (!Number.isSafeInteger(this.checkpointEvery) || this.checkpointEvery < 1) {
      throw new AuditError('checkpointEvery must be a positive integer')
    }
    if (!(this.checkpointIntervalMs > 0)) throw new AuditError('checkpointIntervalMs must be positive')
    this.signer = components.signer
    this.logger = components.logger
  }

  start(): Promise<void> {
    if (this.state === 'started') return Promise.resolve()
    if (this.state === 'starting' && this.startPromise) return this.startPromise
    if (this.state === 'stopping') return Promise.reject(new AuditError('the audit log is stopping'))
    if (this.state === 'failed') return Promise.reject(new AuditError('the audit log failed; stop it first'))
    this.state = 'starting'
    this.startPromise = this.open().then(
      () => {
        this.state = 'started'
        this.timer = setInterval(() => this.checkpointIfDue(), this.checkpointIntervalMs)
        // The timer must not keep a process alive on its own.
        this.timer.unref?.()
      },
      async (error: unknown) => {
        await this.handle?.close().catch(() => {})
        this.handle = undefined
        this.state = 'stopped'
        throw error
      },
    )
    return this.startPromise
  }

  stop(): Promise<void> {
    if (this.state === 'stopping' && this.stopPromise) return this.stopPromise
    this.stopPromise = this.close()
    return this.stopPromise
  }

  private async close(): Promise<void> {
    if (this.state === 'starting') await this.startPromise?.catch(() => {})
    if (this.state === 'stopped') return
    const failed = this.state === 'failed'
    this.state = 'stopping'
    clearInterval(this.timer)
    this.timer = undefined
    const handle = this.handle!
    try {
      await this.queue.catch(() => {})
      if (!failed) {
        // A checkpoint that cannot be written is logged; the entries are still on disk and chained.
        if (this.sinceCheckpoint > 0) await this.checkpointLogged()
        await handle.sync()
      }
    } catch (error) {
      throw new AuditError(`could not flush ${this.file}`, { cause: error })
    } finally {
      this.handle = undefined
      await handle.close().catch(() => {})
      this.state = 'stopped'
    }
  }

  append(type: string, data: Record<string, unknown>): Promise<AuditEntry> {
    if (this.state !== 'started') {
      return Promise.reject(
        new AuditError(
          this.state === 'failed'
            ? 'the audit log stopped accepting entries after a write failure; restart the node'
            : 'the audit log is not started',
        ),
      )
    }
    if (!TYPE_PATTERN.test(type)) {
      return Promise.reject(
        new AuditError(`audit entry type ${JSON.stringify(type)} is not a lowercase name`),
      )
    }
    if (type === CHECKPOINT_TYPE || type === KEY_ROTATED_TYPE) {
      return Promise.reject(new AuditError(`the type "${type}" is reserved for the log itself`))
    }
    let copy: Record<string, unknown>
    try {
      // A private JSON copy: what is hashed is exactly what a reader will parse back, and later
      // changes to the caller's object cannot reach the log.
      copy = JSON.parse(JSON.stringify(data)) as Record<string, unknown>
    } catch (error) {
      return Promise.reject(new AuditError('audit data must be JSON-serialisable', { cause: error }))
    }
    if (!isPlainObject(copy)) return Promise.reject(new AuditError('audit data must be a JSON object'))
    return this.enqueue(async () => {
      const entry = await this.writeEntry(type, copy)
      this.sinceCheckpoint++
      if (this.sinceCheckpoint >= this.checkpointEvery) await this.checkpointLogged()
      return entry
    })
  }

  /**
   * Hand the log to a new node key: a checkpoint by the old key seals what it vouched for, then
   * the `key.rotated` entry (the succession statement, signed by both keys), then a checkpoint by
   * the new key, which signs every checkpoint from then on.
   */
  rotateSigner(
    signer: AuditSigner,
    rotation: { fromPeerId: string; toPeerId: string; statement: KeySuccession },
  ): Promise<AuditEntry> {
    if (this.state !== 'started') return Promise.reject(new AuditError('the audit log is not started'))
    if (base64url(this.signer.publicKey) !== rotation.statement.from)
      return Promise.reject(new AuditError('the rotation does not start from the key that signs this log'))
    if (base64url(signer.publicKey) !== rotation.statement.to)
      return Promise.reject(new AuditError('the rotation does not hand over to the new signer'))
    const data = JSON.parse(JSON.stringify(rotation)) as Record<string, unknown>
    return this.enqueue(async () => {
      if (this.sinceCheckpoint > 0) await this.writeCheckpoint()
      const entry = await this.writeEntry(KEY_ROTATED_TYPE, data)
      this.signer = signer
      await this.writeCheckpoint()
      return entry
    })
  }

  /**
   * Continue a log that was handed to `signer` already (its newest `key.rotated` entry names it),
   * after a rotation that stopped before the key file was replaced.
   */
  continueWithSigner(signer: AuditSigner): void {
    if (!this.rotatedTo(base64url(signer.publicKey)))
      throw new AuditError('the audit log was not handed to this key')
    this.signer = signer
  }

  /** Whether the log's newest `key.rotated` entry hands it to `publicKey` (base64url). */
  rotatedTo(publicKey: string): boolean {
    const rotation = this.recentEntries.findLast((entry) => entry.type === KEY_ROTATED_TYPE)
    return (rotation?.data.statement as { to?: unknown } | undefined)?.to === publicKey
  }

  /** The newest entries, newest last (at most 500, loaded from the file's end at start). Frozen. */
  recent(limit = RECENT_LIMIT): AuditEntry[] {
    if (limit <= 0) return []
    return this.recentEntries.slice(-limit)
  }

  private enqueue<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task)
    // A failed task must not stop the ones queued after it.
    this.queue = run.catch(() => {})
    return run
  }

  private async open(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 })
    await chmod(this.dir, 0o700)
    const handle = await open(this.file, 'a+', 0o600)
    this.handle = handle
    await handle.chmod(0o600)
    this.size = (await handle.stat()).size
    this.lastSeq = 0
    this.lastHash = GENESIS_HASH
    this.sinceCheckpoint = 0
    this.recentEntries.length = 0
    const torn = await this.readTail(handle)
    if (torn) {
      // A crash cut the last write short: keep every whole entry and say so in the log itself.
      await handle.truncate(torn.offset)
      await handle.sync()
      this.size = torn.offset
      this.logger?.warn(
        { file: this.file, offset: torn.offset, bytes: torn.bytes },
        'audit log ended in a torn line; cut it off and continued',
      )
      await this.writeEntry(RECOVERED_TYPE, {
        reason: 'torn last line',
        offset: torn.offset,
        truncatedBytes: torn.bytes,
      })
      this.sinceCheckpoint++
    }
  }

  /**
   * Read the end of the file: enough whole lines to fill `recent()` and find the last checkpoint,
   * reading backwards in growing windows. Returns where a torn last line starts, if any.
   */
  private async readTail(handle: FileHandle): Promise<{ offset: number; bytes: number } | undefined> {
    const size = this.size
    if (size === 0) return undefined
    let window = 64 * 1024
    let buffer: Buffer
    let start: number
    for (;;) {
      start = Math.max(0, size - window)
      buffer = Buffer.alloc(size - start)
      await handle.read(buffer, 0, buffer.length, start)
      let newlines = 0
      for (let index = buffer.indexOf(NEWLINE); index !== -1; index = buffer.indexOf(NEWLINE, index + 1)) {
        newlines++
      }
      // One more newline than lines wanted: the first segment of a window may be partial.
      if (start === 0 || newlines > RECENT_LIMIT + 1) break
      window *= 2
    }
    const lastNewline = buffer.lastIndexOf(NEWLINE)
    const torn =
      lastNewline === buffer.length - 1
        ? undefined
        : { offset: start + lastNewline + 1, bytes: buffer.length - lastNewline - 1 }
    const { lines } = splitLines(buffer.subarray(0, lastNewline + 1))
    if (start > 0) lines.shift()
    // Only possible when the whole file is one torn line (the window grows to the start otherwise).
    if (lines.length === 0) return torn
    const last = parseLine(lines[lines.length - 1]!)
    if ('problem' in last) {
      // A whole line that is wrong is damage, not a torn write; continuing would hide it.
      throw new AuditError(
        `${this.file}: the last entry is damaged (${last.problem}); run oe-node audit verify, then move the file aside to start a new log`,
      )
    }
    if (last.entry.hash !== auditEntryHash(last.entry)) {
      throw new AuditError(
        `${this.file}: the last entry's hash does not match its content; run oe-node audit verify, then move the file aside to start a new log`,
      )
    }
    this.lastSeq = last.entry.seq
    this.lastHash = last.entry.hash
    const entries: AuditEntry[] = []
    for (const line of lines) {
      const parsed = parseLine(line)
      // recent() is a view for people; damage in older lines is verify's business.
      if ('entry' in parsed) entries.push(parsed.entry)
    }
    for (const entry of entries.slice(-RECENT_LIMIT)) this.recentEntries.push(deepFreeze(entry))
    let sinceCheckpoint = 0
    for (let index = entries.length - 1; index >= 0 && entries[index]!.type !== CHECKPOINT_TYPE; index--) {
      sinceCheckpoint++
    }
    this.sinceCheckpoint = sinceCheckpoint
    return torn
  }

  private async writeEntry(type: string, data: Record<string, unknown>): Promise<AuditEntry> {
    const handle = this.handle
    if (!handle) throw new AuditError('the audit log is not open')
    // After a write that could not be cut back, anything appended would follow a broken line.
    if (this.state === 'failed')
      throw new AuditError('the audit log stopped accepting entries after a write failure')
    const unsigned = { seq: this.lastSeq + 1, ts: Date.now(), type, data, prev: this.lastHash }
    const entry: AuditEntry = { ...unsigned, hash: auditEntryHash(unsigned) }
    const line = Buffer.from(`${serialiseEntry(entry)}\n`, 'utf8')
    if (line.length > MAX_LINE_BYTES) {
      throw new AuditError(`audit entry ${type} is ${line.length} bytes; the limit is ${MAX_LINE_BYTES}`)
    }
    try {
      let written = 0
      while (written < line.length) {
        const { bytesWritten } = await handle.write(line, written, line.length - written)
        written += bytesWritten
      }
    } catch (error) {
      await this.rollBack()
      throw new AuditError(`could not write to ${this.file}`, { cause: error })
    }
    this.size += line.length
    this.lastSeq = entry.seq
    this.lastHash = entry.hash
    this.recentEntries.push(deepFreeze(entry))
    if (this.recentEntries.length > RECENT_LIMIT) this.recentEntries.shift()
    return entry
  }

  /** Cut a half-written line off so the next entry still follows a whole one. */
  private async rollBack(): Promise<void> {
    try {
      await this.handle!.truncate(this.size)
    } catch (error) {
      this.state = 'failed'
      this.logger?.warn(
        { file: this.file, err: error },
        'audit log could not be cut back after a failed write; no more entries will be accepted',
      )
    }
  }

  private async writeCheckpoint(): Promise<AuditEntry> {
    const upTo = this.lastSeq
    const hash = this.lastHash
    const sig = this.signer.sign(checkpointMessage(hash))
    const entry = await this.writeEntry(CHECKPOINT_TYPE, {
      upTo,
      hash,
      key: base64url(this.signer.publicKey),
      sig: base64url(sig),
    })
    this.sinceCheckpoint = 0
    await this.handle!.sync()
    return entry
  }

  /** A checkpoint that fails is logged, not thrown: the entry that triggered it is already written. */
  private async checkpointLogged(): Promise<void> {
    try {
      await this.writeCheckpoint()
    } catch (error) {
      this.logger?.warn({ file: this.file, err: error }, 'audit checkpoint failed')
    }
  }

  private checkpointIfDue(): void {
    if (this.state !== 'started' || this.sinceCheckpoint === 0) return
    void this.enqueue(async () => {
      if (this.state === 'started' && this.sinceCheckpoint > 0) await this.checkpointLogged()
    })
  }
}

/**
 * Check the whole log offline: every line's bytes, hash and prev link, consecutive seq from 1,
 * and every checkpoint's link and signature against `publicKey`. Stops at the first bad entry.
 * An empty or missing log is ok with 0 entries.
 */
export async function verifyAuditLog(
  dir: string,
  publicKey: Uint8Array,
  options: { signal?: AbortSignal } = {},
): Promise<AuditVerifyResult> {
  options.signal?.throwIfAborted()
  const file = join(dir, AUDIT_FILE)
  const nodeKey = base64url(publicKey)
  // Checkpoints before the first rotation are the first rotation's old key's to sign.
  let expectedKey = (await firstRotationFrom(file, options)) ?? nodeKey
  let expectedBytes = fromBase64url(expectedKey) ?? publicKey
  let lastRotationLine = 0
  const result: AuditVerifyResult = { ok: true, entries: 0, checkpoints: 0, receipts: 0, lastSeq: 0 }
  const receipts = new ReceiptChecker()
  let lineNumber = 0
  let previous: AuditEntry | undefined

  const fail = (reason: string, seq?: number): AuditVerifyResult => ({
    ...result,
    ok: false,
    firstBad:
      seq === undefined ? { file, line: lineNumber, reason } : { file, line: lineNumber, seq, reason },
  })

  /** Returns a reason when the line is bad. */
  const check = (bytes: Uint8Array): { reason: string; seq?: number } | undefined => {
    const parsed = parseLine(bytes)
    if ('problem' in parsed)
      return { reason: parsed.problem, ...(parsed.seq === undefined ? {} : { seq: parsed.seq }) }
    const entry = parsed.entry
    const seq = entry.seq
    if (previous === undefined) {
      if (seq !== 1) return { reason: `seq ${seq} starts the log; a log starts at seq 1`, seq }
      if (entry.prev !== GENESIS_HASH) return { reason: 'prev of seq 1 is not the genesis value', seq }
    } else {
      if (seq !== previous.seq + 1) return { reason: `seq ${seq} follows ${previous.seq}`, seq }
      if (entry.prev !== previous.hash)
        return { reason: `prev does not match the hash of seq ${previous.seq}`, seq }
    }
    if (auditEntryHash(entry) !== entry.hash) return { reason: 'hash does not match content', seq }
    if (entry.type === CHECKPOINT_TYPE) {
      const problem = checkpointProblem(entry, previous, expectedKey, expectedBytes)
      if (problem !== undefined) return { reason: problem, seq }
      result.checkpoints++
    }
    if (entry.type === KEY_ROTATED_TYPE) {
      const rotation = rotationOf(entry)
      if (typeof rotation === 'string') return { reason: rotation, seq }
      if (rotation.from !== expectedKey)
        return { reason: 'key.rotated does not start from the key that signed the log before it', seq }
      expectedKey = rotation.to
      expectedBytes = fromBase64url(rotation.to)!
      lastRotationLine = lineNumber
    }
    const receiptProblem = receipts.check(entry)
    if (receiptProblem !== undefined) return { reason: receiptProblem, seq }
    if (entry.type === RECEIPT_TYPE) result.receipts++
    previous = entry
    result.entries++
    result.lastSeq = seq
    return undefined
  }

  const stream = createReadStream(file, options.signal ? { signal: options.signal } : {})
  const chunks = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>
  let rest: Buffer = Buffer.alloc(0)
  try {
    for (;;) {
      let next: IteratorResult<Buffer>
      try {
        next = await chunks.next()
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return result
        if (options.signal?.aborted) throw options.signal.reason
        throw new AuditError(`could not read ${file}`, { cause: error })
      }
      if (next.done) break
      const { lines, rest: tail } = splitLines(
        rest.length === 0 ? next.value : Buffer.concat([rest, next.value]),
      )
      rest = Buffer.from(tail)
      for (const line of lines) {
        lineNumber++
        const bad = check(line)
        if (bad) return fail(bad.reason, bad.seq)
      }
    }
  } finally {
    stream.destroy()
  }
  if (rest.length > 0) {
    lineNumber++
    return fail(
      'last line is incomplete (a torn write; the node cuts it off at its next start)',
      claimedSeq(rest).seq,
    )
  }
  if (expectedKey !== nodeKey) {
    lineNumber = lastRotationLine
    return fail("the last key.rotated entry hands the log to another key than this node's")
  }
  return result
}

/** The statement of a `key.rotated` entry, checked (both signatures), or why it is not one. */
function rotationOf(entry: AuditEntry): KeySuccession | string {
  const { fromPeerId, toPeerId, statement } = entry.data
  if (typeof fromPeerId !== 'string' || typeof toPeerId !== 'string' || statement === undefined)
    return 'key.rotated data is not {fromPeerId, toPeerId, statement}'
  try {
    return parseSuccession(statement, 'statement')
  } catch (error) {
    return `key.rotated: ${(error as Error).message}`
  }
}

/**
 * The old key of the log's first `key.rotated` entry, found by a first read of the file (lines
 * that do not parse are the second, checking read's to report).
 */
async function firstRotationFrom(
  file: string,
  options: { signal?: AbortSignal },
): Promise<string | undefined> {
  const marker = Buffer.from(`"type":"${KEY_ROTATED_TYPE}"`)
  const stream = createReadStream(file, options.signal ? { signal: options.signal } : {})
  let rest: Buffer = Buffer.alloc(0)
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      const { lines, rest: tail } = splitLines(rest.length === 0 ? chunk : Buffer.concat([rest, chunk]))
      rest = Buffer.from(tail)
      for (const line of lines) {
        if (line.indexOf(marker) === -1) continue
        const parsed = parseLine(line)
        if (!('entry' in parsed) || parsed.entry.type !== KEY_ROTATED_TYPE) continue
        const statement = parsed.entry.data.statement as { from?: unknown } | undefined
        if (typeof statement?.from === 'string') return statement.from
      }
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    if (options.signal?.aborted) throw options.signal.reason
    throw new AuditError(`could not read ${file}`, { cause: error })
  } finally {
    stream.destroy()
  }
  return undefined
}

export const RECEIPT_TYPE = 'transfer.received'
const ZERO_CHAIN = '0'.repeat(64)

/**
 * Transfer receipts (`transfer.received`, written by the consumer of an agreement) checked
 * against the provider's key: the peer's ed25519 key comes from its PeerId in the log's own
 * `peer.added` entry, so the check needs nothing but the log; a `peer.key_succeeded` entry (the
 * peer rotated its key; its statement is checked) adds the new key, and receipts signed by any
 * key of the peer's chain verify. Each receipt's `lastSig` must be
 * the provider's signature over `lastDigest` (the SHA-256 of the last batch body it covers);
 * `prev` must be where the agreement's last receipt left the chain, or the start of a session
 * (64 zeros); and a receipt of one batch must have `chain = sha256(prev ‖ lastDigest)`. (A
 * receipt of several batches holds only the last digest, so its chain cannot be recomputed.)
 */
class ReceiptChecker {
  /** Per peer alias, its keys: the one it was added with, then each successor. */
  private readonly peerKeys = new Map<string, Uint8Array[]>()
  private readonly chains = new Map<string, string>()

  check(entry: AuditEntry): string | undefined {
    const data = entry.data
    if (entry.type === 'peer.added' && typeof data.peer === 'string' && typeof data.peerId === 'string') {
      const key = peerKey(data.peerId)
      if (key) this.peerKeys.set(data.peer, [key])
      return undefined
    }
    if (entry.type === PEER_KEY_SUCCEEDED_TYPE) return this.succeeded(data)
    if (entry.type !== RECEIPT_TYPE) return undefined
    const { id, peer, batches, records, bytes, prev, chain, lastDigest, lastSig } = data
    if (
      typeof id !== 'string' ||
      typeof peer !== 'string' ||
      !Array.isArray(batches) ||
      batches.length !== 2 ||
      !batches.every((n) => Number.isSafeInteger(n) && n >= 1) ||
      (batches[0] as number) > (batches[1] as number) ||
      !Number.isSafeInteger(records) ||
      (records as number) < 0 ||
      !Number.isSafeInteger(bytes) ||
      (bytes as number) < 1 ||
      (prev !== undefined && (typeof prev !== 'string' || !HEX_HASH.test(prev))) ||
      typeof chain !== 'string' ||
      !HEX_HASH.test(chain) ||
      typeof lastDigest !== 'string' ||
      !HEX_HASH.test(lastDigest) ||
      typeof lastSig !== 'string'
    ) {
      return 'transfer receipt is not {id, peer, batches, records, bytes, prev, chain, lastDigest, lastSig}'
    }
    const keys = this.peerKeys.get(peer)
    if (!keys) return `transfer receipt names peer '${peer}', which no peer.added entry before it added`
    const signature = fromBase64url(lastSig)
    const valid =
      signature?.length === 64 &&
      keys.some((key) => {
        try {
          return ed.verify(signature, Buffer.from(lastDigest, 'hex'), key, { zip215: false })
        } catch {
          return false
        }
      })
    if (!valid) return `transfer receipt's provider signature does not verify against ${peer}'s key`
    // Receipts written before `prev` was recorded carry no chain start: their links are not checked.
    if (typeof prev === 'string') {
      const before = this.chains.get(id)
      if (prev !== ZERO_CHAIN && prev !== before)
        return 'transfer receipt does not continue the chain of the receipt before it'
      if (batches[0] === batches[1]) {
        const expected = createHash('sha256')
          .update(Buffer.from(prev, 'hex'))
          .update(Buffer.from(lastDigest, 'hex'))
          .digest('hex')
        if (expected !== chain) return 'transfer receipt chain does not match its batch digest'
      }
    }
    this.chains.set(id, chain)
    return undefined
  }

  /** A peer's key succession: its statement must verify and start from the peer's newest key. */
  private succeeded(data: Record<string, unknown>): string | undefined {
    if (typeof data.peer !== 'string' || data.statement === undefined)
      return 'peer.key_succeeded data is not {peer, …, statement}'
    let statement: KeySuccession
    try {
      statement = parseSuccession(data.statement, 'statement')
    } catch (error) {
      return `peer.key_succeeded: ${(error as Error).message}`
    }
    const keys = this.peerKeys.get(data.peer)
    if (!keys)
      return `peer.key_succeeded names peer '${data.peer}', which no peer.added entry before it added`
    if (base64url(keys[keys.length - 1]!) !== statement.from)
      return `peer.key_succeeded does not start from the newest key of '${data.peer}'`
    keys.push(fromBase64url(statement.to)!)
    return undefined
  }
}

/** The raw ed25519 public key inside an Ed25519 PeerId, or undefined for any other. */
function peerKey(peerId: string): Uint8Array | undefined {
  try {
    const key = peerIdFromString(peerId).publicKey
    return key?.type === 'Ed25519' ? key.raw : undefined
  } catch {
    return undefined
  }
}

function checkpointProblem(
  entry: AuditEntry,
  previous: AuditEntry | undefined,
  expectedKey: string,
  publicKey: Uint8Array,
): string | undefined {
  const data = entry.data
  if (
    !sameKeys(data, CHECKPOINT_KEYS) ||
    !Number.isSafeInteger(data.upTo) ||
    typeof data.hash !== 'string' ||
    typeof data.key !== 'string' ||
    typeof data.sig !== 'string'
  ) {
    return 'checkpoint data is not {upTo, hash, key, sig}'
  }
  if (previous === undefined) return 'checkpoint with no entry before it'
  if (data.upTo !== previous.seq)
    return `checkpoint upTo ${data.upTo} is not the entry before it (seq ${previous.seq})`
  if (data.hash !== previous.hash) return `checkpoint hash does not match the hash of seq ${previous.seq}`
  if (data.key !== expectedKey) return "checkpoint is signed by another key than this node's"
  const signature = fromBase64url(data.sig)
  if (signature === undefined || signature.length !== 64)
    return 'checkpoint signature is not 64 bytes of base64url'
  let valid = false
  try {
    // RFC 8032 strict verification: only this node's own signatures are expected here.
    valid = ed.verify(signature, checkpointMessage(data.hash), publicKey, { zip215: false })
  } catch {
    valid = false
  }
  return valid ? undefined : 'checkpoint signature invalid'
}

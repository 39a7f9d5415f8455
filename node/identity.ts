/**
 * The node's identity: one ed25519 key, PKCS#8 PEM in `<data-dir>/keys/node.key` (folder 0700,
 * file 0600, never overwritten, refused when group/world-readable). The same key is the libp2p
 * PeerId and signs agreements, cards and batches. Key bytes are never logged.
 *
 * Key rotation (`oe-node key rotate`) is the one way the key changes: the successor is written
 * to `node.key.next`, the current key is kept as `node.key.<time>.retired` (0600, so a peer that
 * was offline can still be told by a courier keyed by it), and `node.key.next` then replaces
 * `node.key` in one rename, so `node.key` always holds a key.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
} from 'node:crypto'
import {
  chmod,
  constants,
  copyFile,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
} from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import * as ed from '@noble/ed25519'
import { KeyFormatError, KeyPermissionError } from './errors.ts'

// @noble/ed25519 needs a synchronous SHA-512; the runtime's is exact and fast.
ed.hashes.sha512 = (message: Uint8Array) => new Uint8Array(createHash('sha512').update(message).digest())

export interface NodeIdentity {
  /** libp2p PeerId (base58btc identity multihash of the protobuf public key): `12D3KooW…`. */
  peerId: string
  /** Raw 32-byte ed25519 public key. */
  publicKey: Uint8Array
  /** Sign bytes with the node key (@noble/ed25519). */
  sign(message: Uint8Array): Uint8Array
  /** The runtime's key object, for fast signing on hot paths. */
  readonly privateKeyObject: KeyObject
  /** Raw 32-byte seed, for libp2p's key type. Handle with care: never log it. */
  readonly privateKeySeed: Uint8Array
}

export async function ensureKeyDir(keyPath: string): Promise<void> {
  const dir = dirname(keyPath)
  await mkdir(dir, { recursive: true, mode: 0o700 })
  await chmod(dir, 0o700)
}

/** Create the key if absent (never overwrites). Returns true when it was created. */
export async function createIdentityKey(keyPath: string): Promise<boolean> {
  await ensureKeyDir(keyPath)
  // Every start calls this; only generate a key when there is none.
  if (
    await stat(keyPath).then(
      () => true,
      () => false,
    )
  )
    return false
  try {
    await writeNewKey(keyPath)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw error
  }
  return true
}

/** Generate a key into `keyPath` (0600); fails with EEXIST when the file exists. */
async function writeNewKey(keyPath: string): Promise<void> {
  const { privateKey } = generateKeyPairSync('ed25519')
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string
  const handle = await open(keyPath, 'wx', 0o600)
  try {
    await handle.writeFile(pem)
    await handle.sync()
  } finally {
    await handle.close()
  }
}

/** Where a rotation writes the successor key before it takes the place of `keyPath`. */
export const nextKeyPath = (keyPath: string): string => `${keyPath}.next`

/** Where a rotation keeps the key it replaced: `node.key.2026-01-02T03-04-05-678Z.retired`. */
export const retiredKeyPath = (keyPath: string, at: number): string =>
  `${keyPath}.${new Date(at).toISOString().replace(/[:.]/g, '-')}.retired`

/** A fresh key at `nextPath` (0600; one left by an interrupted rotation is replaced). */
export async function createSuccessorKey(nextPath: string): Promise<NodeIdentity> {
  await ensureKeyDir(nextPath)
  await rm(nextPath, { force: true })
  await writeNewKey(nextPath)
  return loadIdentity(nextPath)
}

/**
 * Put the successor in place: the current key is copied to `retiredPath` (0600, never
 * overwritten), then `nextPath` replaces `keyPath` in one rename.
 */
export async function promoteSuccessorKey(
  keyPath: string,
  nextPath: string,
  retiredPath: string,
): Promise<void> {
  try {
    await copyFile(keyPath, retiredPath, constants.COPYFILE_EXCL)
  } catch (error) {
    // Kept already (a promotion that stopped after the copy): only the very same key will do.
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    const [kept, current] = await Promise.all([readFile(retiredPath, 'utf8'), readFile(keyPath, 'utf8')])
    if (kept !== current) throw new KeyFormatError(`${retiredPath} exists and holds another key`)
  }
  await chmod(retiredPath, 0o600)
  await rename(nextPath, keyPath)
}

/** A retired key kept beside `keyPath` whose public key (base64url) is `publicKey`. */
export async function findRetiredIdentity(
  keyPath: string,
  publicKey: string,
): Promise<NodeIdentity | undefined> {
  const dir = dirname(keyPath)
  const prefix = `${basename(keyPath)}.`
  const names = await readdir(dir).catch(() => [] as string[])
  for (const name of names
    .filter((n) => n.startsWith(prefix) && n.endsWith('.retired'))
    .sort()
    .reverse()) {
    const identity = await loadIdentity(join(dir, name)).catch(() => undefined)
    if (identity && Buffer.from(identity.publicKey).toString('base64url') === publicKey) return identity
  }
  return undefined
}

export async function loadIdentity(keyPath: string): Promise<NodeIdentity> {
  const info = await stat(keyPath).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT')
      throw new KeyFormatError(`there is no identity key at ${keyPath}: run oe-node init`)
    throw error
  })
  if ((info.mode & 0o077) !== 0) {
    throw new KeyPermissionError(
      `refusing to use ${keyPath}: it is readable or writable by group or others (mode ${(info.mode & 0o777).toString(8)}); run chmod 600 on it`,
    )
  }
  let keyObject: KeyObject
  try {
    keyObject = createPrivateKey(await readFile(keyPath, 'utf8'))
  } catch (error) {
    throw new KeyFormatError(`${keyPath} is not a PKCS#8 PEM private key`, { cause: error })
  }
  if (keyObject.asymmetricKeyType !== 'ed25519') {
    throw new KeyFormatError(`${keyPath} holds a ${keyObject.asymmetricKeyType} key; oe-node needs ed25519`)
  }
  return identityFromKeyObject(keyObject)
}

export function identityFromKeyObject(keyObject: KeyObject): NodeIdentity {
  const pkcs8 = keyObject.export({ type: 'pkcs8', format: 'der' })
  const seed = new Uint8Array(pkcs8.subarray(pkcs8.length - 32))
  const spki = createPublicKey(keyObject).export({ type: 'spki', format: 'der' })
  const publicKey = new Uint8Array(spki.subarray(spki.length - 32))
  return {
    peerId: peerIdFromPublicKey(publicKey),
    publicKey,
    sign: (message) => ed.sign(message, seed),
    privateKeyObject: keyObject,
    privateKeySeed: seed,
  }
}

/** Verify an ed25519 signature with @noble/ed25519; false on any malformed input. */
export function verifySignature(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean {
  try {
    return ed.verify(signature, message, publicKey)
  } catch {
    return false
  }
}

const BASE58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz'

export function base58btc(bytes: Uint8Array): string {
  let zeros = 0
  while (zeros < bytes.length && bytes[zeros] === 0) zeros++
  const digits: number[] = []
  for (const byte of bytes) {
    let carry = byte
    for (let i = 0; i < digits.length; i++) {
      carry += digits[i]! << 8
      digits[i] = carry % 58
      carry = Math.floor(carry / 58)
    }
    while (carry > 0) {
      digits.push(carry % 58)
      carry = Math.floor(carry / 58)
    }
  }
  return (
    '1'.repeat(zeros) +
    digits
      .reverse()
      .map((digit) => BASE58[digit])
      .join('')
  )
}

/**
 * The libp2p PeerId of an ed25519 public key: identity multihash (0x00, length 36) of the
 * protobuf `PublicKey { Type: Ed25519 (1), Data: key }`, in base58btc.
 */
export function peerIdFromPublicKey(publicKey: Uint8Array): string {
  if (publicKey.length !== 32) throw new KeyFormatError('an ed25519 public key has 32 bytes')
  const multihash = new Uint8Array(38)
  multihash.set([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
  multihash.set(publicKey, 6)
  return base58btc(multihash)
}

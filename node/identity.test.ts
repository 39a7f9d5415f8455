import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  sign,
  verify,
} from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, describe, expect, test } from 'vitest'
import { cleanupAll, tempDir } from '../test/helpers/node-process.ts'
import {
  base58btc,
  createIdentityKey,
  identityFromKeyObject,
  loadIdentity,
  peerIdFromPublicKey,
  verifySignature,
} from './identity.ts'

afterEach(cleanupAll)

async function keyPath(): Promise<string> {
  return join(await tempDir(), 'keys', 'node.key')
}

async function modeOf(path: string): Promise<number> {
  return (await stat(path)).mode & 0o777
}

async function errorOf(promise: Promise<unknown>): Promise<Error> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  )
  expect(error, 'the promise should have been rejected').toBeInstanceOf(Error)
  return error as Error
}

/** Write a PEM key file as an operator might, with tight permissions. */
async function writeKeyFile(path: string, pem: string, mode = 0o600): Promise<void> {
  await mkdir(join(path, '..'), { recursive: true, mode: 0o700 })
  await writeFile(path, pem, { mode })
  await chmod(path, mode)
}

/** Base58btc written independently of identity.ts (BigInt division, not byte carries). */
function referenceBase58(bytes: Uint8Array): string {
  const alphabet = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz'
  let value = 0n
  for (const byte of bytes) value = value * 256n + BigInt(byte)
  let text = ''
  while (value > 0n) {
    text = alphabet[Number(value % 58n)]! + text
    value /= 58n
  }
  let leadingZeros = 0
  while (leadingZeros < bytes.length && bytes[leadingZeros] === 0) leadingZeros++
  return '1'.repeat(leadingZeros) + text
}

/** Identity multihash of the libp2p protobuf PublicKey { Type: Ed25519, Data: key }. */
function referencePeerId(publicKey: Uint8Array): string {
  return referenceBase58(new Uint8Array([0x00, 0x24, 0x08, 0x01, 0x12, 0x20, ...publicKey]))
}

/** An ed25519 key object from its 32-byte seed (PKCS#8 v1 DER prefix + seed). */
function ed25519FromSeed(seedHex: string): KeyObject {
  const der = Buffer.concat([
    Buffer.from('302e020100300506032b657004220420', 'hex'),
    Buffer.from(seedHex, 'hex'),
  ])
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })
}

// The ed25519 vector of the libp2p peer-id spec (peer-ids.md "Test vectors"): the private key
// protobuf 0x08011240 ‖ seed ‖ public key, and the public key protobuf 0x08011220 ‖ public key.
const SPEC_SEED = '7e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d'
const SPEC_PUBLIC_KEY = '1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e'
const SPEC_PEER_ID = '12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq'

describe('createIdentityKey', () => {
  test('writes an ed25519 PKCS#8 PEM key, file 0600 in a 0700 folder', async () => {
    const path = await keyPath()
    expect(await createIdentityKey(path)).toBe(true)
    const pem = await readFile(path, 'utf8')
    expect(pem).toMatch(/^-----BEGIN PRIVATE KEY-----\n[A-Za-z0-9+/=\n]+-----END PRIVATE KEY-----\n?$/)
    expect(createPrivateKey(pem).asymmetricKeyType).toBe('ed25519')
    expect(await modeOf(path)).toBe(0o600)
    expect(await modeOf(join(path, '..'))).toBe(0o700)
  })

  test('never overwrites: a second call returns false and leaves the key as it was', async () => {
    const path = await keyPath()
    expect(await createIdentityKey(path)).toBe(true)
    const before = await readFile(path)
    const peerId = (await loadIdentity(path)).peerId
    expect(await createIdentityKey(path)).toBe(false)
    expect(await readFile(path)).toEqual(before)
    expect(await modeOf(path)).toBe(0o600)
    expect((await loadIdentity(path)).peerId).toBe(peerId)
  })

  test('tightens an existing key folder to 0700', async () => {
    const path = await keyPath()
    await mkdir(join(path, '..'), { mode: 0o755 })
    await chmod(join(path, '..'), 0o755)
    await createIdentityKey(path)
    expect(await modeOf(join(path, '..'))).toBe(0o700)
  })

  test('two nodes get two different keys', async () => {
    const first = await keyPath()
    const second = await keyPath()
    await createIdentityKey(first)
    await createIdentityKey(second)
    expect((await loadIdentity(first)).peerId).not.toBe((await loadIdentity(second)).peerId)
  })
})

describe('loadIdentity', () => {
  test('loads a created key: 32-byte public key and seed that belong together', async () => {
    const path = await keyPath()
    await createIdentityKey(path)
    const identity = await loadIdentity(path)
    expect(identity.publicKey).toHaveLength(32)
    expect(identity.privateKeySeed).toHaveLength(32)
    const spki = createPublicKey(identity.privateKeyObject).export({ type: 'spki', format: 'der' })
    expect(Buffer.from(identity.publicKey)).toEqual(spki.subarray(spki.length - 32))
    expect(identity.privateKeyObject.asymmetricKeyType).toBe('ed25519')
  })

  for (const mode of [0o640, 0o604, 0o620, 0o644]) {
    test(`refuses a key with mode 0${mode.toString(8)} (KeyPermissionError)`, async () => {
      const path = await keyPath()
      await createIdentityKey(path)
      await chmod(path, mode)
      const error = await errorOf(loadIdentity(path))
      expect(error.name).toBe('KeyPermissionError')
      expect(error.message).toContain(path)
      expect(error.message).toMatch(/chmod 600/)
    })
  }

  test('a key made 0600 again loads', async () => {
    const path = await keyPath()
    await createIdentityKey(path)
    await chmod(path, 0o640)
    await chmod(path, 0o600)
    await expect(loadIdentity(path)).resolves.toMatchObject({ peerId: expect.stringMatching(/^12D3KooW/) })
  })

  test('refuses a file that is not a key (KeyFormatError)', async () => {
    const path = await keyPath()
    await writeKeyFile(path, 'this is not a key\n')
    const error = await errorOf(loadIdentity(path))
    expect(error.name).toBe('KeyFormatError')
    expect(error.message).toContain(path)
  })

  test('refuses a public key PEM (KeyFormatError)', async () => {
    const path = await keyPath()
    const { publicKey } = generateKeyPairSync('ed25519')
    await writeKeyFile(path, publicKey.export({ type: 'spki', format: 'pem' }) as string)
    expect((await errorOf(loadIdentity(path))).name).toBe('KeyFormatError')
  })

  test('refuses an RSA key (KeyFormatError naming the type)', async () => {
    const path = await keyPath()
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
    await writeKeyFile(path, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string)
    const error = await errorOf(loadIdentity(path))
    expect(error.name).toBe('KeyFormatError')
    expect(error.message).toMatch(/rsa/)
    expect(error.message).toMatch(/ed25519/)
  })

  test('refuses an EC key (KeyFormatError naming the type)', async () => {
    const path = await keyPath()
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    await writeKeyFile(path, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string)
    const error = await errorOf(loadIdentity(path))
    expect(error.name).toBe('KeyFormatError')
    expect(error.message).toMatch(/\bec\b/)
  })

  test('checks permissions before reading: a world-readable EC key is a permission error', async () => {
    const path = await keyPath()
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    await writeKeyFile(path, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o644)
    expect((await errorOf(loadIdentity(path))).name).toBe('KeyPermissionError')
  })
})

describe('peer id', () => {
  test('the reference encoder agrees with the libp2p spec vector', () => {
    expect(referencePeerId(Buffer.from(SPEC_PUBLIC_KEY, 'hex'))).toBe(SPEC_PEER_ID)
  })

  test('the spec vector: seed → public key → peer id', () => {
    const identity = identityFromKeyObject(ed25519FromSeed(SPEC_SEED))
    expect(Buffer.from(identity.publicKey).toString('hex')).toBe(SPEC_PUBLIC_KEY)
    expect(Buffer.from(identity.privateKeySeed).toString('hex')).toBe(SPEC_SEED)
    expect(identity.peerId).toBe(SPEC_PEER_ID)
    expect(peerIdFromPublicKey(Buffer.from(SPEC_PUBLIC_KEY, 'hex'))).toBe(SPEC_PEER_ID)
  })

  test('a created key has a 12D3KooW peer id equal to the identity multihash in base58btc', async () => {
    const path = await keyPath()
    await createIdentityKey(path)
    const identity = await loadIdentity(path)
    expect(identity.peerId).toMatch(/^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$/)
    expect(identity.peerId).toBe(referencePeerId(identity.publicKey))
  })

  test('many random keys match the reference encoding', () => {
    for (let i = 0; i < 200; i++) {
      const key = new Uint8Array(randomBytes(32))
      if (i === 0) key.fill(0)
      if (i === 1) key.fill(0xff)
      expect(peerIdFromPublicKey(key)).toBe(referencePeerId(key))
    }
  })

  test('base58btc keeps leading zero bytes as 1s', () => {
    const cases = [[], [0], [0, 0, 1], [0, 0xff], [1, 0, 0], [0x3a], [0xff, 0xff, 0xff, 0xff]]
    for (const bytes of cases) {
      expect(base58btc(new Uint8Array(bytes)), JSON.stringify(bytes)).toBe(
        referenceBase58(new Uint8Array(bytes)),
      )
    }
    expect(base58btc(new Uint8Array([0, 0, 1]))).toBe('112')
    expect(base58btc(new Uint8Array([0x3a]))).toBe('21')
  })

  test('a public key of the wrong length is a KeyFormatError', () => {
    let caught: unknown
    try {
      peerIdFromPublicKey(new Uint8Array(31))
    } catch (error) {
      caught = error
    }
    expect((caught as Error | undefined)?.name).toBe('KeyFormatError')
  })

  const libp2pInstalled =
    existsSync(join(process.cwd(), 'node_modules', '@libp2p', 'peer-id')) &&
    existsSync(join(process.cwd(), 'node_modules', '@libp2p', 'crypto'))

  test.skipIf(!libp2pInstalled)('matches @libp2p/peer-id for the same key', async () => {
    // Specifiers held in variables so the type checker does not need the packages.
    const peerIdModule = '@libp2p/peer-id'
    const cryptoModule = '@libp2p/crypto/keys'
    const { peerIdFromPrivateKey } = await import(peerIdModule)
    const { privateKeyFromRaw } = await import(cryptoModule)
    const path = await keyPath()
    await createIdentityKey(path)
    const identity = await loadIdentity(path)
    const raw = new Uint8Array([...identity.privateKeySeed, ...identity.publicKey])
    expect(peerIdFromPrivateKey(privateKeyFromRaw(raw)).toString()).toBe(identity.peerId)
  })
})

describe('signatures', () => {
  const message = new TextEncoder().encode('agreement 3f2a… signed by the provider')

  async function identity() {
    const path = await keyPath()
    await createIdentityKey(path)
    return loadIdentity(path)
  }

  test('a @noble/ed25519 signature verifies with node:crypto', async () => {
    const id = await identity()
    const signature = id.sign(message)
    expect(signature).toHaveLength(64)
    const publicKeyObject = createPublicKey(id.privateKeyObject)
    expect(verify(null, message, publicKeyObject, signature)).toBe(true)
    expect(verify(null, new TextEncoder().encode('something else'), publicKeyObject, signature)).toBe(false)
  })

  test('a node:crypto signature verifies with verifySignature (@noble/ed25519)', async () => {
    const id = await identity()
    const signature = new Uint8Array(sign(null, message, id.privateKeyObject))
    expect(verifySignature(signature, message, id.publicKey)).toBe(true)
    // ed25519 is deterministic: both implementations produce the same bytes.
    expect(Buffer.from(signature)).toEqual(Buffer.from(id.sign(message)))
  })

  test('verifySignature refuses a changed message, a changed signature and another key', async () => {
    const id = await identity()
    const other = await identity()
    const signature = id.sign(message)
    const changedMessage = new Uint8Array(message)
    changedMessage[0]! ^= 1
    const changedSignature = new Uint8Array(signature)
    changedSignature[10]! ^= 0x40
    expect(verifySignature(signature, message, id.publicKey)).toBe(true)
    expect(verifySignature(signature, changedMessage, id.publicKey)).toBe(false)
    expect(verifySignature(changedSignature, message, id.publicKey)).toBe(false)
    expect(verifySignature(signature, message, other.publicKey)).toBe(false)
  })

  test('verifySignature returns false on garbage instead of throwing', async () => {
    const id = await identity()
    const signature = id.sign(message)
    const garbage: [Uint8Array, Uint8Array][] = [
      [new Uint8Array(0), id.publicKey],
      [new Uint8Array(63), id.publicKey],
      [new Uint8Array(65), id.publicKey],
      [new Uint8Array(64).fill(0xff), id.publicKey],
      [new Uint8Array(randomBytes(64)), id.publicKey],
      [signature, new Uint8Array(0)],
      [signature, new Uint8Array(31)],
      [signature, new Uint8Array(32).fill(0xff)],
      [signature, new Uint8Array(randomBytes(33))],
    ]
    for (const [sig, key] of garbage) {
      expect(() => verifySignature(sig, message, key)).not.toThrow()
      expect(verifySignature(sig, message, key)).toBe(false)
    }
  })
})

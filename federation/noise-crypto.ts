/**
 * ChaCha20-Poly1305 for Noise. Bun's `node:crypto` has no `chacha20-poly1305` ("Unknown cipher"),
 * so js-libp2p-noise falls back to its WebAssembly build, which seals and opens about 100 MB/s
 * here: 13–26 % of a node's CPU in a federated transfer (BENCHMARKS.md). The system's OpenSSL
 * (libcrypto.so.3, present wherever systemd or the openssl tool is) does the same 10–18× faster,
 * so the node calls it through `bun:ffi` when it can and keeps the WebAssembly build otherwise.
 *
 * The OpenSSL path is used only after it has sealed and opened RFC 8439's test vector and agreed
 * with the WebAssembly build on a sample, so a library that misbehaves is never trusted with a
 * link. `federation.noise_crypto` chooses: `auto` (OpenSSL when it passes, else WebAssembly),
 * `openssl` (refuse to start without it) or `wasm`.
 *
 * @example
 * const { crypto, impl } = noiseCrypto('auto')
 * createLibp2p({ connectionEncrypters: [noise({ crypto })] })
 */

import { dlopen, FFIType, ptr } from 'bun:ffi'
import type { ICryptoInterface } from '@chainsafe/libp2p-noise'
import { asCrypto, defaultCrypto } from '@chainsafe/libp2p-noise/crypto'
import { FederationError } from './errors.ts'

export type NoiseCryptoChoice = 'auto' | 'openssl' | 'wasm'

export interface NoiseCrypto {
  crypto: ICryptoInterface
  /** What seals the frames: `openssl (libcrypto.so.3)` or `wasm`. */
  impl: string
  /** Why OpenSSL is not in use, when `auto` fell back. */
  fallback?: string
}

/** `federation.noise_crypto = "openssl"`, and the system's OpenSSL cannot be loaded or failed its self-test. */
export class NoiseCryptoUnavailableError extends FederationError {
  override name = 'NoiseCryptoUnavailableError'
}

const TAG_BYTES = 16
const KEY_BYTES = 32
const NONCE_BYTES = 12
/** EVP_CTRL_AEAD_GET_TAG / EVP_CTRL_AEAD_SET_TAG. */
const GET_TAG = 0x10
const SET_TAG = 0x11
const LIBRARIES = ['libcrypto.so.3', 'libcrypto.so.1.1', 'libcrypto.so']

const WASM: ICryptoInterface = { ...defaultCrypto, ...asCrypto }

/** The parts of libcrypto used here; every call is synchronous, so one context per direction. */
function openLibcrypto(libraries: readonly string[]): {
  aead: Pick<ICryptoInterface, 'chaCha20Poly1305Encrypt' | 'chaCha20Poly1305Decrypt'>
  name: string
} {
  const errors: string[] = []
  for (const name of libraries) {
    try {
      const { symbols: C } = dlopen(name, {
        EVP_chacha20_poly1305: { args: [], returns: FFIType.ptr },
        EVP_CIPHER_CTX_new: { args: [], returns: FFIType.ptr },
        EVP_CipherInit_ex: {
          args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.i32],
          returns: FFIType.i32,
        },
        EVP_CipherUpdate: {
          args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.i32],
          returns: FFIType.i32,
        },
        EVP_CipherFinal_ex: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
        EVP_CIPHER_CTX_ctrl: {
          args: [FFIType.ptr, FFIType.i32, FFIType.i32, FFIType.ptr],
          returns: FFIType.i32,
        },
      })
      const cipher = C.EVP_chacha20_poly1305()
      const sealCtx = C.EVP_CIPHER_CTX_new()
      const openCtx = C.EVP_CIPHER_CTX_new()
      if (!cipher || !sealCtx || !openCtx) throw new Error('no chacha20-poly1305 in it')
      if (
        C.EVP_CipherInit_ex(sealCtx, cipher, null, null, null, 1) !== 1 ||
        C.EVP_CipherInit_ex(openCtx, cipher, null, null, null, 0) !== 1
      )
        throw new Error('chacha20-poly1305 did not initialise')
      // Handed over as the array itself on every call: a pointer taken once goes stale when the
      // engine moves a small array's storage.
      const outLength = new Int32Array(1)
      // Bytes from the library land only in `out`, and only `length` of them: checked after each call.
      const update = (ctx: typeof sealCtx, out: Uint8Array, offset: number, input: Uint8Array): void => {
        if (input.byteLength === 0) return
        if (C.EVP_CipherUpdate(ctx, ptr(out, offset), outLength, input, input.byteLength) !== 1)
          throw new Error('chacha20-poly1305 failed')
        if (outLength[0] !== input.byteLength) throw new Error('chacha20-poly1305 wrote an unexpected length')
      }
      const keyed = (
        ctx: typeof sealCtx,
        k: Uint8Array,
        nonce: Uint8Array,
        ad: Uint8Array,
        encrypt: 0 | 1,
      ) => {
        if (k.byteLength !== KEY_BYTES || nonce.byteLength !== NONCE_BYTES)
          throw new Error('chacha20-poly1305 needs a 32-byte key and a 12-byte nonce')
        if (C.EVP_CipherInit_ex(ctx, null, null, k, nonce, encrypt) !== 1)
          throw new Error('chacha20-poly1305 failed')
        if (ad.byteLength > 0 && C.EVP_CipherUpdate(ctx, null, outLength, ad, ad.byteLength) !== 1)
          throw new Error('chacha20-poly1305 failed')
      }
      const aead: Pick<ICryptoInterface, 'chaCha20Poly1305Encrypt' | 'chaCha20Poly1305Decrypt'> = {
        chaCha20Poly1305Encrypt(plaintext, nonce, ad, k) {
          const out = new Uint8Array(plaintext.byteLength + TAG_BYTES)
          keyed(sealCtx, k, nonce, ad, 1)
          if (plaintext instanceof Uint8Array) update(sealCtx, out, 0, plaintext)
          else {
            let offset = 0
            for (const part of plaintext) {
              update(sealCtx, out, offset, part)
              offset += part.byteLength
            }
          }
          // Pointers into `out` are taken right at each call, for the reason given above.
          if (
            C.EVP_CipherFinal_ex(sealCtx, ptr(out, plaintext.byteLength), outLength) !== 1 ||
            outLength[0] !== 0
          )
            throw new Error('chacha20-poly1305 failed')
          if (C.EVP_CIPHER_CTX_ctrl(sealCtx, GET_TAG, TAG_BYTES, ptr(out, plaintext.byteLength)) !== 1)
            throw new Error('chacha20-poly1305 failed')
          return out
        },
        chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst) {
          const sealed = ciphertext instanceof Uint8Array ? ciphertext : ciphertext.subarray()
          const length = sealed.byteLength - TAG_BYTES
          if (length < 0) throw new Error('Invalid chacha20poly1305 decryption')
          // Noise hands a `dst` that starts where the ciphertext starts: opening in place is fine
          // then, and only then (OpenSSL allows exact overlap, not partial).
          const inPlace =
            dst !== undefined &&
            dst.byteLength >= length &&
            (dst.buffer !== sealed.buffer || dst.byteOffset === sealed.byteOffset)
          const out = inPlace ? dst.subarray(0, length) : new Uint8Array(length)
          const tag = sealed.slice(length)
          keyed(openCtx, k, nonce, ad, 0)
          if (C.EVP_CIPHER_CTX_ctrl(openCtx, SET_TAG, TAG_BYTES, tag) !== 1)
            throw new Error('chacha20-poly1305 failed')
          update(openCtx, out, 0, sealed.subarray(0, length))
          // The tag is checked here; nothing is returned unless it matches.
          if (C.EVP_CipherFinal_ex(openCtx, tag, outLength) !== 1)
            throw new Error('Invalid chacha20poly1305 decryption')
          return out
        },
      }
      return { aead, name }
    } catch (error) {
      errors.push(`${name}: ${error instanceof Error ? error.message : String(error)}`)
    }
  }
  throw new NoiseCryptoUnavailableError(`no usable OpenSSL libcrypto (${errors.join('; ')})`)
}

const hex = (text: string): Uint8Array => Uint8Array.from(Buffer.from(text.replace(/\s+/g, ''), 'hex'))

/** RFC 8439 §2.8.2: the AEAD test vector. */
const RFC8439 = {
  key: hex('808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f'),
  nonce: hex('070000004041424344454647'),
  ad: hex('50515253c0c1c2c3c4c5c6c7'),
  plaintext: new TextEncoder().encode(
    "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.",
  ),
  ciphertext: hex(`d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
    3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
    92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
    3ff4def08e4b7a9de576d26586cec64b6116`),
  tag: hex('1ae10b594f09e26a7e902ecbd0600691'),
}

const equal = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0
const bytes = (value: { subarray(): Uint8Array }): Uint8Array => value.subarray()

/** Seal and open the RFC vector and a sample against the WebAssembly build; throws on any difference. */
function selfTest(aead: Pick<ICryptoInterface, 'chaCha20Poly1305Encrypt' | 'chaCha20Poly1305Decrypt'>): void {
  const v = RFC8439
  const sealed = bytes(aead.chaCha20Poly1305Encrypt(v.plaintext, v.nonce, v.ad, v.key))
  if (!equal(sealed, Buffer.concat([v.ciphertext, v.tag])))
    throw new NoiseCryptoUnavailableError('OpenSSL failed the RFC 8439 test vector')
  if (!equal(bytes(aead.chaCha20Poly1305Decrypt(sealed, v.nonce, v.ad, v.key)), v.plaintext))
    throw new NoiseCryptoUnavailableError('OpenSSL failed to open the RFC 8439 test vector')
  const forged = sealed.slice()
  forged[0] = (forged[0] ?? 0) ^ 1
  let opened = true
  try {
    aead.chaCha20Poly1305Decrypt(forged, v.nonce, v.ad, v.key)
  } catch {
    opened = false
  }
  if (opened) throw new NoiseCryptoUnavailableError('OpenSSL opened a forged frame')
  const sample = new Uint8Array(3000).map((_, i) => (i * 31 + 7) & 0xff)
  if (
    !equal(
      bytes(aead.chaCha20Poly1305Encrypt(sample, v.nonce, v.ad, v.key)),
      bytes(WASM.chaCha20Poly1305Encrypt(sample, v.nonce, v.ad, v.key)),
    )
  )
    throw new NoiseCryptoUnavailableError('OpenSSL and the WebAssembly build disagree')
}

type Loaded = { crypto: ICryptoInterface; impl: string } | Error

/** Load and self-test OpenSSL from the first of `libraries` that works; an Error says why none did. */
function loadOpenssl(libraries: readonly string[]): Loaded {
  try {
    const { aead, name } = openLibcrypto(libraries)
    selfTest(aead)
    return { crypto: { ...WASM, ...aead }, impl: `openssl (${name})` }
  } catch (error) {
    return error instanceof Error ? error : new Error(String(error))
  }
}

/** Loaded once per process, on first use. */
let system: Loaded | undefined

/**
 * The ChaCha20-Poly1305 to give Noise, as `choice` asks (see the file's comment). `libraries`
 * replaces the system's names (tests).
 */
export function noiseCrypto(choice: NoiseCryptoChoice = 'auto', libraries?: readonly string[]): NoiseCrypto {
  if (choice === 'wasm') return { crypto: WASM, impl: 'wasm' }
  if (!libraries && system === undefined) system = loadOpenssl(LIBRARIES)
  const loaded = libraries ? loadOpenssl(libraries) : system!
  if (!(loaded instanceof Error)) return loaded
  if (choice === 'openssl')
    throw new NoiseCryptoUnavailableError(`federation.noise_crypto is "openssl", but ${loaded.message}`)
  return { crypto: WASM, impl: 'wasm', fallback: loaded.message }
}

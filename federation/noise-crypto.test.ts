import { randomBytes } from 'node:crypto'
import { noise } from '@chainsafe/libp2p-noise'
import { asCrypto } from '@chainsafe/libp2p-noise/crypto'
import { yamux } from '@chainsafe/libp2p-yamux'
import { tcp } from '@libp2p/tcp'
import { createLibp2p, type Libp2p } from 'libp2p'
import { Uint8ArrayList } from 'uint8arraylist'
import { afterEach, describe, expect, it } from 'vitest'
import { NoiseCryptoUnavailableError, noiseCrypto } from './noise-crypto.ts'

const openssl = noiseCrypto('auto')
const wasm = noiseCrypto('wasm')
const bytes = (value: Uint8Array | Uint8ArrayList): Uint8Array => value.subarray()

describe('noise crypto', () => {
  it('uses the system OpenSSL on this machine (libcrypto.so.3 is there)', () => {
    expect(openssl.fallback).toBeUndefined()
    expect(openssl.impl).toMatch(/^openssl \(libcrypto\.so/)
    expect(noiseCrypto('openssl').impl).toBe(openssl.impl)
    expect(wasm.impl).toBe('wasm')
  })

  it('seals and opens exactly as the WebAssembly build, at every frame size Noise sends', () => {
    const k = randomBytes(32)
    for (const size of [0, 1, 15, 16, 17, 63, 64, 65, 200, 1199, 1200, 4096, 8191, 65519]) {
      const plaintext = randomBytes(size)
      const nonce = randomBytes(12)
      const ad = size % 2 === 0 ? new Uint8Array(0) : randomBytes(32)
      const ours = bytes(openssl.crypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, k))
      const theirs = bytes(asCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, k))
      expect(Buffer.from(ours).equals(Buffer.from(theirs)), `sealed ${size} bytes`).toBe(true)
      expect(
        Buffer.from(bytes(openssl.crypto.chaCha20Poly1305Decrypt(theirs, nonce, ad, k))).equals(plaintext),
      ).toBe(true)
      expect(Buffer.from(bytes(asCrypto.chaCha20Poly1305Decrypt(ours, nonce, ad, k))).equals(plaintext)).toBe(
        true,
      )
    }
  })

  it('seals a plaintext handed as a list of pieces and opens a ciphertext handed as one', () => {
    const k = randomBytes(32)
    const nonce = randomBytes(12)
    const pieces = [randomBytes(10), randomBytes(0), randomBytes(700), randomBytes(3)]
    const whole = Buffer.concat(pieces)
    const fromList = bytes(
      openssl.crypto.chaCha20Poly1305Encrypt(new Uint8ArrayList(...pieces), nonce, new Uint8Array(0), k),
    )
    const fromWhole = bytes(asCrypto.chaCha20Poly1305Encrypt(whole, nonce, new Uint8Array(0), k))
    expect(Buffer.from(fromList).equals(Buffer.from(fromWhole))).toBe(true)
    const sealedList = new Uint8ArrayList(fromList.subarray(0, 100), fromList.subarray(100))
    expect(
      Buffer.from(
        bytes(openssl.crypto.chaCha20Poly1305Decrypt(sealedList, nonce, new Uint8Array(0), k)),
      ).equals(whole),
    ).toBe(true)
  })

  it('opens in place into the part of a chunk Noise hands it, and leaves the rest of the chunk alone', () => {
    const k = randomBytes(32)
    const nonce = randomBytes(12)
    const plaintext = randomBytes(5000)
    const sealed = bytes(asCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, new Uint8Array(0), k))
    // A chunk with bytes before and after the frame, as Noise's decoder sees it.
    const chunk = new Uint8Array(7 + sealed.byteLength + 9).fill(0xaa)
    chunk.set(sealed, 7)
    const frame = chunk.subarray(7, 7 + sealed.byteLength)
    const dst = chunk.subarray(7, 7 + plaintext.byteLength)
    const opened = bytes(openssl.crypto.chaCha20Poly1305Decrypt(frame, nonce, new Uint8Array(0), k, dst))
    expect(Buffer.from(opened).equals(plaintext)).toBe(true)
    expect(opened.buffer).toBe(chunk.buffer)
    expect([...chunk.subarray(0, 7)].every((b) => b === 0xaa)).toBe(true)
    expect([...chunk.subarray(7 + sealed.byteLength)].every((b) => b === 0xaa)).toBe(true)
  })

  it('refuses any frame whose tag, body, nonce, key or associated data was changed, and a frame too short for a tag', () => {
    const k = randomBytes(32)
    const nonce = randomBytes(12)
    const ad = randomBytes(32)
    const plaintext = randomBytes(300)
    const sealed = bytes(openssl.crypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, k))
    const open =
      (frame: Uint8Array, n: Uint8Array = nonce, a: Uint8Array = ad, key: Uint8Array = k) =>
      () =>
        openssl.crypto.chaCha20Poly1305Decrypt(frame, n, a, key)
    const flipped = (source: Uint8Array, at: number) => {
      const copy = Uint8Array.from(source)
      copy[at] = (copy[at] ?? 0) ^ 0x01
      return copy
    }
    expect(open(flipped(sealed, sealed.byteLength - 1))).toThrow(/Invalid chacha20poly1305 decryption/)
    expect(open(flipped(sealed, 0))).toThrow(/Invalid chacha20poly1305 decryption/)
    expect(open(sealed, flipped(nonce, 11))).toThrow(/Invalid chacha20poly1305 decryption/)
    expect(open(sealed, nonce, flipped(ad, 3))).toThrow(/Invalid chacha20poly1305 decryption/)
    expect(open(sealed, nonce, ad, flipped(k, 31))).toThrow(/Invalid chacha20poly1305 decryption/)
    expect(open(sealed.subarray(0, 15))).toThrow(/Invalid chacha20poly1305 decryption/)
    expect(open(sealed, nonce.subarray(0, 8))).toThrow(/12-byte nonce/)
    // And the genuine frame still opens after all of that (no state left behind).
    expect(Buffer.from(bytes(open(sealed)())).equals(plaintext)).toBe(true)
  })

  it('fuzz: random frames and random damage never open, and never crash the process', () => {
    const k = randomBytes(32)
    for (let i = 0; i < 2_000; i++) {
      const size = (i * 7919) % 3000
      const nonce = randomBytes(12)
      const junk = randomBytes(size)
      expect(() => openssl.crypto.chaCha20Poly1305Decrypt(junk, nonce, new Uint8Array(0), k)).toThrow()
      const plaintext = randomBytes(size)
      const sealed = Uint8Array.from(
        bytes(openssl.crypto.chaCha20Poly1305Encrypt(plaintext, nonce, new Uint8Array(0), k)),
      )
      const at = (i * 104729) % sealed.byteLength
      sealed[at] = (sealed[at] ?? 0) ^ (1 + (i % 255))
      expect(() => openssl.crypto.chaCha20Poly1305Decrypt(sealed, nonce, new Uint8Array(0), k)).toThrow()
    }
  })

  it('without a usable libcrypto: "auto" falls back to WebAssembly and says why; "openssl" refuses by name', () => {
    const missing = ['liboe-no-such-crypto.so.9']
    const fallback = noiseCrypto('auto', missing)
    expect(fallback.impl).toBe('wasm')
    expect(fallback.crypto).toBe(wasm.crypto)
    expect(fallback.fallback).toMatch(/no usable OpenSSL libcrypto \(liboe-no-such-crypto\.so\.9: /)
    // A library that loads but has no such cipher is no better (libc has no EVP_* at all).
    expect(noiseCrypto('auto', ['libc.so.6']).fallback).toMatch(/libc\.so\.6: /)
    let refused: unknown
    try {
      noiseCrypto('openssl', missing)
    } catch (error) {
      refused = error
    }
    expect(refused).toBeInstanceOf(NoiseCryptoUnavailableError)
    expect((refused as Error).name).toBe('NoiseCryptoUnavailableError')
    expect((refused as Error).message).toMatch(
      /federation\.noise_crypto is "openssl", but no usable OpenSSL libcrypto/,
    )
  })

  describe('over a real libp2p connection', () => {
    const nodes: Libp2p[] = []
    afterEach(async () => {
      await Promise.all(nodes.splice(0).map((node) => node.stop()))
    })

    it('a node on OpenSSL and one on WebAssembly talk to each other, both ways, across many frames', async () => {
      const make = (crypto: typeof openssl.crypto) =>
        createLibp2p({
          addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
          transports: [tcp()],
          connectionEncrypters: [noise({ crypto })],
          streamMuxers: [yamux()],
        })
      const a = await make(openssl.crypto)
      const b = await make(wasm.crypto)
      nodes.push(a, b)
      const payload = randomBytes(300_000)
      await b.handle('/oe-test/echo/1', async (stream) => {
        for await (const chunk of stream) stream.send(chunk.subarray())
        await stream.close()
      })
      const stream = await a.dialProtocol(b.getMultiaddrs()[0]!, '/oe-test/echo/1')
      const received: Uint8Array[] = []
      const reading = (async () => {
        for await (const chunk of stream) received.push(chunk.subarray())
      })()
      for (let at = 0; at < payload.byteLength; at += 50_000) {
        if (!stream.send(payload.subarray(at, at + 50_000))) await stream.onDrain()
      }
      await stream.close()
      await reading
      expect(Buffer.concat(received).equals(payload)).toBe(true)
    })
  })
})

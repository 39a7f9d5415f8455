import { createHash } from 'node:crypto'
import * as ed from '@noble/ed25519'
import { describe, expect, it } from 'vitest'
import { base64url, type Signer } from './agreement.ts'
import { encodeFrame } from './frames.ts'
import { parseAgreementMessage } from './messages.ts'
import {
  type KeySuccession,
  MAX_GRACE_MS,
  parseSuccession,
  peerIdOfKey,
  signSuccession,
  successionBytes,
} from './succession.ts'

ed.hashes.sha512 = (message: Uint8Array) => new Uint8Array(createHash('sha512').update(message).digest())

function makeSigner(): Signer {
  const seed = ed.utils.randomSecretKey()
  return { publicKey: ed.getPublicKey(seed), sign: (message) => ed.sign(message, seed) }
}

/** A copy of a statement as it would come off the wire (plain data). */
const wire = (statement: KeySuccession): Record<string, unknown> => JSON.parse(JSON.stringify(statement))

describe('key succession statements', () => {
  it('a statement signed by the old and the new key parses back as it was signed', () => {
    const [from, to] = [makeSigner(), makeSigner()]
    const statement = signSuccession({ org: 'Gridco', from, to, at: 1_700_000_000_000, graceMs: 3_600_000 })
    expect(statement).toMatchObject({
      v: 1,
      org: 'Gridco',
      from: base64url(from.publicKey),
      to: base64url(to.publicKey),
      at: 1_700_000_000_000,
      graceUntil: 1_700_003_600_000,
    })
    expect(parseSuccession(wire(statement))).toEqual(statement)
    // It also travels as an agreement-protocol message, checked by the same parser.
    const { message, id } = parseAgreementMessage({ t: 'succession', succession: wire(statement) })
    expect(message).toEqual({ t: 'succession', succession: statement })
    expect(id).toBe(`succession:${statement.from}`)
    expect(encodeFrame({ t: 'succession', succession: statement }).length).toBeLessThan(1024)
  })

  it('a forged statement (a third key signs for the old one) is refused as a bad signature', () => {
    const [victim, attacker] = [makeSigner(), makeSigner()]
    // The attacker names the victim's key as the old one and signs everything with its own.
    const forged = signSuccession({ org: 'Gridco', from: attacker, to: attacker, graceMs: 0 })
    const claim = { ...wire(forged), from: base64url(victim.publicKey) }
    expect(() => parseSuccession(claim)).toThrow(
      expect.objectContaining({
        name: 'SuccessionSignatureError',
        message: expect.stringMatching(/old key/),
      }),
    )
  })

  it('a statement the new key did not sign (no proof of possession) is refused', () => {
    const [from, to, other] = [makeSigner(), makeSigner(), makeSigner()]
    const statement = signSuccession({ org: 'Gridco', from, to, graceMs: 0 })
    const bytes = successionBytes(statement)
    const claim = { ...wire(statement), sigs: { ...statement.sigs, to: base64url(other.sign(bytes)) } }
    expect(() => parseSuccession(claim)).toThrow(
      expect.objectContaining({
        name: 'SuccessionSignatureError',
        message: expect.stringMatching(/new key/),
      }),
    )
  })

  it('any field changed after signing breaks the signatures', () => {
    const statement = signSuccession({ org: 'Gridco', from: makeSigner(), to: makeSigner(), graceMs: 60_000 })
    for (const change of [
      { org: 'Othergrid' },
      { at: statement.at + 1 },
      { graceUntil: statement.graceUntil + 86_400_000 },
      { to: base64url(makeSigner().publicKey) },
    ]) {
      expect(() => parseSuccession({ ...wire(statement), ...change })).toThrow(
        expect.objectContaining({ name: 'SuccessionSignatureError' }),
      )
    }
  })

  it('malformed statements are refused with the field that is wrong', () => {
    const statement = wire(
      signSuccession({ org: 'Gridco', from: makeSigner(), to: makeSigner(), graceMs: 0 }),
    )
    const cases: [Record<string, unknown>, string][] = [
      [{ ...statement, v: 2 }, 'succession.v'],
      [{ ...statement, from: 'not a key' }, 'succession.from'],
      [{ ...statement, to: statement.from }, 'succession.to'],
      [{ ...statement, graceUntil: (statement.at as number) - 1 }, 'succession.graceUntil'],
      [{ ...statement, graceUntil: (statement.at as number) + MAX_GRACE_MS + 1 }, 'succession.graceUntil'],
      [{ ...statement, sigs: undefined }, 'succession.sigs'],
      [{ ...statement, extra: 1 }, 'succession.extra'],
    ]
    for (const [value, path] of cases) {
      expect(() => parseSuccession(value)).toThrow(
        expect.objectContaining({ name: 'AgreementFormatError', path }),
      )
    }
  })

  it('names the libp2p peer id of a key', () => {
    expect(peerIdOfKey(base64url(makeSigner().publicKey))).toMatch(/^12D3KooW/)
  })
})

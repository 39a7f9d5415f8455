import { headers as natsHeaders } from '@nats-io/nats-core'
import { describe, expect, it } from 'vitest'
import { FixedHeader } from './fixed-header.ts'

describe('FixedHeader', () => {
  it('encodes exactly as nats.js headers with the same one key', () => {
    const reference = natsHeaders()
    reference.set('Oe-Src', 'abcdef0123456789abcdef01.tel.4711')
    const fixed = new FixedHeader('Oe-Src', 'abcdef0123456789abcdef01.tel.4711')
    const encode = (h: unknown) => Buffer.from((h as { encode(): Uint8Array }).encode()).toString()
    expect(encode(fixed)).toBe(encode(reference))
  })

  it('answers reads like nats.js headers and refuses writes', () => {
    const fixed = new FixedHeader('Oe-Src', 'x.tel.1')
    expect(fixed.get('Oe-Src')).toBe('x.tel.1')
    expect(fixed.get('oe-src')).toBe('')
    expect(fixed.has('Oe-Src')).toBe(true)
    expect(fixed.keys()).toEqual(['Oe-Src'])
    expect([...fixed]).toEqual([['Oe-Src', ['x.tel.1']]])
    expect(() => fixed.set()).toThrow(/read-only/)
  })

  it('numbered headers encode like single ones and check key and prefix once, up front', () => {
    const numbered = FixedHeader.numbered('Oe-Src', 'abc.tel.')
    const encode = (h: FixedHeader) => Buffer.from(h.encode()).toString()
    expect(encode(numbered(4711))).toBe(encode(new FixedHeader('Oe-Src', 'abc.tel.4711')))
    expect(numbered(7).get('Oe-Src')).toBe('abc.tel.7')
    expect(() => numbered(1.5)).toThrow(/whole number/)
    expect(() => FixedHeader.numbered('Oe-Src', 'x\r\n')).toThrow(/ASCII header value/)
  })

  it('refuses names and values that would break the header block', () => {
    expect(() => new FixedHeader('Oe Src', 'x')).toThrow(/header name/)
    expect(() => new FixedHeader('Oe-Src', 'x\r\nEvil: 1')).toThrow(/ASCII header value/)
  })
})

/**
 * One read-only NATS header, encoded once. nats.js builds headers through a Map, validates and
 * re-encodes them on every publish; a hot path that stamps one header on thousands of messages a
 * second (the transfer consumer's `Oe-Src`) hands it this instead. nats.js reads headers for
 * publishing through their `encode()`, which this provides; everything else of `MsgHdrs` answers
 * like nats.js's own for the one key.
 */
import { Match, type MsgHdrs } from '@nats-io/nats-core'

const encoder = new TextEncoder()

/** Passed by `numbered`, whose values are checked already. */
const CHECKED = Symbol('checked')

function checkHeader(key: string, value: string): void {
  if (!/^[\x21-\x39\x3b-\x7e]+$/.test(key)) throw new TypeError(`'${key}' is not a header name`)
  if (!/^[\x20-\x7e]*$/.test(value)) throw new TypeError(`'${value}' is not a plain ASCII header value`)
}

export class FixedHeader implements MsgHdrs {
  readonly hasError = false
  readonly status = ''
  readonly code = 0
  readonly description = ''
  private readonly encoded: Uint8Array

  /** `key` and `value` must be header-safe: ASCII, no CR/LF, no colon in the key. */
  constructor(
    private readonly key: string,
    private readonly value: string,
    checked?: typeof CHECKED,
  ) {
    if (checked !== CHECKED) checkHeader(key, value)
    this.encoded = encoder.encode(`NATS/1.0\r\n${key}: ${value}\r\n\r\n`)
  }

  /**
   * Headers `key: <prefix><n>` for whole numbers n, with key and prefix checked once (a hot path
   * stamps one on every message; digits cannot break a header).
   */
  static numbered(key: string, prefix: string): (n: number) => FixedHeader {
    checkHeader(key, prefix)
    return (n) => {
      if (!Number.isSafeInteger(n)) throw new TypeError(`${n} is not a whole number`)
      return new FixedHeader(key, `${prefix}${n}`, CHECKED)
    }
  }

  /** The wire form (`NATS/1.0` block), as nats.js sends it. */
  encode(): Uint8Array {
    return this.encoded
  }

  private matches(k: string, match: Match = Match.Exact): boolean {
    if (match === Match.Exact) return k === this.key
    return k.toLowerCase() === this.key.toLowerCase()
  }

  get(k: string, match?: Match): string {
    return this.matches(k, match) ? this.value : ''
  }

  last(k: string, match?: Match): string {
    return this.get(k, match)
  }

  has(k: string, match?: Match): boolean {
    return this.matches(k, match)
  }

  keys(): string[] {
    return [this.key]
  }

  values(k: string, match?: Match): string[] {
    return this.matches(k, match) ? [this.value] : []
  }

  set(): void {
    throw new TypeError('a FixedHeader is read-only')
  }

  append(): void {
    throw new TypeError('a FixedHeader is read-only')
  }

  delete(): void {
    throw new TypeError('a FixedHeader is read-only')
  }

  *[Symbol.iterator](): Iterator<[string, string[]]> {
    yield [this.key, [this.value]]
  }
}

/**
 * Node cards: what organisations exchange to peer. A card holds the org name, peer id, public
 * key and addresses, signed by the node key, and travels as one line of text: `oe1` followed by
 * base64url of its CBOR. A card whose signature does not hold, or whose peer id does not match
 * its key, is refused.
 */
import { decodeCbor, encodeCbor } from '../data-plane/index.ts'
import { CardError } from './errors.ts'
import { type NodeIdentity, peerIdFromPublicKey, verifySignature } from './identity.ts'

export interface NodeCard {
  org: string
  peerId: string
  /** Raw ed25519 public key, base64url in JSON. */
  publicKey: string
  addrs: string[]
}

const PREFIX = 'oe1'
const CARD_VERSION = 1
const MAX_CARD_TEXT = 8 * 1024

interface CardBody {
  v: number
  org: string
  key: Uint8Array
  addrs: string[]
}

export function createCard(
  identity: NodeIdentity,
  org: string,
  addrs: readonly string[],
): { card: NodeCard; text: string } {
  const body: CardBody = { v: CARD_VERSION, org, key: identity.publicKey, addrs: [...addrs] }
  const signature = identity.sign(encodeCbor(body))
  const text = PREFIX + Buffer.from(encodeCbor({ ...body, sig: signature })).toString('base64url')
  return { card: cardFromBody(body), text }
}

function cardFromBody(body: CardBody): NodeCard {
  return {
    org: body.org,
    peerId: peerIdFromPublicKey(body.key),
    publicKey: Buffer.from(body.key).toString('base64url'),
    addrs: body.addrs,
  }
}

/** Parse and verify a card's text form. */
export function parseCard(text: string): NodeCard {
  const trimmed = text.replace(/\s+/g, '')
  if (!trimmed.startsWith(PREFIX)) throw new CardError(`a node card starts with '${PREFIX}'`)
  if (trimmed.length > MAX_CARD_TEXT) throw new CardError('the card is too long')
  const bytes = Buffer.from(trimmed.slice(PREFIX.length), 'base64url')
  let decoded: unknown
  try {
    decoded = decodeCbor(bytes)
  } catch {
    throw new CardError('the card is not valid (it may have been cut when copied)')
  }
  const raw = decoded as Partial<CardBody & { sig: Uint8Array }>
  if (
    typeof raw !== 'object' ||
    raw === null ||
    raw.v !== CARD_VERSION ||
    typeof raw.org !== 'string' ||
    !(raw.key instanceof Uint8Array) ||
    raw.key.length !== 32 ||
    !Array.isArray(raw.addrs) ||
    !raw.addrs.every((addr) => typeof addr === 'string') ||
    !(raw.sig instanceof Uint8Array)
  ) {
    throw new CardError('the card does not have the fields of a version 1 card')
  }
  const body: CardBody = { v: raw.v, org: raw.org, key: raw.key, addrs: raw.addrs }
  if (!verifySignature(raw.sig, encodeCbor(body), raw.key)) {
    throw new CardError('the card signature does not verify: it was altered or not signed by its key')
  }
  return cardFromBody(body)
}

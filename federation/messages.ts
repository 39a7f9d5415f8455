/**
 * Messages of `/oe/agreement/1.0.0`. One message per stream: the sender writes one frame and
 * closes its side; the receiver answers with one reply frame. Every message carries its own
 * signature (the agreement's, or the termination's), checked by the receiver against the peer
 * the connection is authenticated as.
 */
import {
  type AgreementDocument,
  parseAgreementDocument,
  parseTermination,
  type Termination,
} from './agreement.ts'
import { AgreementFormatError } from './errors.ts'
import { type KeySuccession, parseSuccession } from './succession.ts'

export const AGREEMENT_PROTOCOL = '/oe/agreement/1.0.0'

export type AgreementMessage =
  | { t: 'propose'; doc: AgreementDocument }
  | { t: 'accept'; id: string; sig: string }
  | { t: 'reject'; rejection: Termination }
  | { t: 'revoke'; revocation: Termination }
  /** The sender's organisation replaced its key (see `succession.ts`); about no agreement. */
  | { t: 'succession'; succession: KeySuccession }

export type AgreementReply = { ok: true } | { ok: false; error: string; message: string }

/** The agreement a message is about. */
export function messageAgreementId(message: AgreementMessage, proposeId?: string): string {
  switch (message.t) {
    case 'propose':
      return proposeId ?? ''
    case 'accept':
      return message.id
    case 'reject':
      return message.rejection.id
    case 'revoke':
      return message.revocation.id
    case 'succession':
      return ''
  }
}

/** What a succession message is serialised under (instead of an agreement id). */
export const successionLockId = (statement: KeySuccession): string => `succession:${statement.from}`

function fields(value: unknown, allowed: string[]): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new AgreementFormatError('', 'a message must be a map')
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) throw new AgreementFormatError(key, 'is not a field of this message')
  }
  return value as Record<string, unknown>
}

/**
 * Parse and check a message (signatures included); returns the id for proposals too, and for a
 * succession the key its changes are serialised under.
 */
export function parseAgreementMessage(value: unknown): { message: AgreementMessage; id: string } {
  const t = (value as { t?: unknown } | null)?.t
  switch (t) {
    case 'propose': {
      const raw = fields(value, ['t', 'doc'])
      const { id, doc } = parseAgreementDocument(raw.doc)
      return { message: { t, doc }, id }
    }
    case 'accept': {
      const raw = fields(value, ['t', 'id', 'sig'])
      if (typeof raw.id !== 'string' || !/^[0-9a-f]{64}$/.test(raw.id))
        throw new AgreementFormatError('id', 'must be an agreement id')
      if (typeof raw.sig !== 'string' || raw.sig.length > 128)
        throw new AgreementFormatError('sig', 'must be a signature')
      return { message: { t, id: raw.id, sig: raw.sig }, id: raw.id }
    }
    case 'reject': {
      const raw = fields(value, ['t', 'rejection'])
      const rejection = parseTermination('reject', raw.rejection)
      return { message: { t, rejection }, id: rejection.id }
    }
    case 'revoke': {
      const raw = fields(value, ['t', 'revocation'])
      const revocation = parseTermination('revoke', raw.revocation)
      return { message: { t, revocation }, id: revocation.id }
    }
    case 'succession': {
      const raw = fields(value, ['t', 'succession'])
      const succession = parseSuccession(raw.succession)
      return { message: { t, succession }, id: successionLockId(succession) }
    }
    default:
      throw new AgreementFormatError('t', `unknown message type '${String(t).slice(0, 32)}'`)
  }
}

export function parseReply(value: unknown): AgreementReply {
  const raw = value as { ok?: unknown; error?: unknown; message?: unknown } | null
  if (raw?.ok === true) return { ok: true }
  if (raw?.ok === false && typeof raw.error === 'string' && typeof raw.message === 'string') {
    return { ok: false, error: raw.error.slice(0, 64), message: raw.message.slice(0, 1000) }
  }
  throw new AgreementFormatError('', 'the reply is not {ok} or {ok, error, message}')
}

/**
 * The subject scheme of ARCHITECTURE §5. Every id is a single NATS token (the model forbids dots),
 * so a subject is built by joining and parsed by splitting.
 */
import { ValidationError } from './errors.ts'
import { isQuantity, isResourceId, isResourceKind, type ResourceKind } from './model.ts'

export const SUBJECT_ROOT = 'oe'

export const subjects = {
  telemetry: (kind: string, rid: string, quantity: string): string => `oe.tel.${kind}.${rid}.${quantity}`,
  event: (kind: string, rid: string, type: string): string => `oe.evt.${kind}.${rid}.${type}`,
  control: (kind: string, rid: string, command: string): string => `oe.ctl.${kind}.${rid}.${command}`,
  standing: (kind: string, rid: string): string => `oe.std.${kind}.${rid}`,
  peer: (alias: string, rest: string): string => `oe.peer.${alias}.${rest}`,
  send: (alias: string, kind: string, rid: string, command: string): string =>
    `oe.send.${alias}.ctl.${kind}.${rid}.${command}`,
  /** KV key in `oe-resources`. */
  resourceKey: (kind: string, rid: string): string => `${kind}.${rid}`,
} as const

export interface TelemetrySubject {
  kind: ResourceKind
  rid: string
  q: string
}

/** Parse `oe.tel.<kind>.<rid>.<q>`; throws ValidationError if it is not one. */
export function parseTelemetrySubject(subject: string): TelemetrySubject {
  const parts = subject.split('.')
  if (parts.length !== 5 || parts[0] !== SUBJECT_ROOT || parts[1] !== 'tel') {
    throw new ValidationError('subject', `'${subject}' is not oe.tel.<kind>.<rid>.<q>`)
  }
  const [, , kind, rid, q] = parts
  if (!isResourceKind(kind)) throw new ValidationError('subject', `unknown kind in '${subject}'`)
  if (!isResourceId(rid)) throw new ValidationError('subject', `bad resource id in '${subject}'`)
  if (!isQuantity(q)) throw new ValidationError('subject', `unknown quantity in '${subject}'`)
  return { kind, rid, q }
}

/** A subject or filter a client may ask about: tokens of printable ASCII, `*` and `>` as NATS allows. */
export function isValidSubjectFilter(subject: string): boolean {
  if (subject.length === 0 || subject.length > 512) return false
  const tokens = subject.split('.')
  return tokens.every((token, index) => {
    if (token.length === 0) return false
    if (token === '>') return index === tokens.length - 1
    if (token === '*') return true
    return /^[\x21-\x7e]+$/.test(token) && !token.includes('*') && !token.includes('>')
  })
}

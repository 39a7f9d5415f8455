/**
 * Control grants travel the other way: the consumer's applications publish
 * `oe.send.<alias>.ctl.<kind>.<rid>.<command>` (stream OE_OUT). This node checks each against an
 * active agreement with that peer holding a control grant for it (and its bounds), then sends it
 * over `/oe/control/1.0.0`, signed. The provider checks it again and publishes it on its own
 * `oe.ctl.<kind>.<rid>.<command>` for plugins to act on. Either way the outcome comes back to
 * the sender's node as an event: `oe.peer.<alias>.evt.<kind>.<rid>.control_result`.
 */
import { decodeCbor, isResourceId, isResourceKind } from '../data-plane/index.ts'
import { type AgreementDocument, agreementState, type Grant, type Termination } from './agreement.ts'
import { encodeCanonical } from './canonical-cbor.ts'
import { AgreementFormatError } from './errors.ts'

export const CONTROL_PROTOCOL = '/oe/control/1.0.0'

export interface ControlCommand {
  /** Agreement id. */
  id: string
  kind: string
  rid: string
  command: string
  /** The command's CBOR payload, e.g. `limit_power` `{v, u, until, source}`. */
  payload: Uint8Array
  /** When the consumer sent it (epoch ms). */
  at: number
}

export type ControlDecision = { ok: true; grant: Grant } | { ok: false; reason: string }

interface AgreementLike {
  doc: AgreementDocument
  rejection?: Termination
  revocation?: Termination
}

/** Whether an agreement lets its consumer send this command, checked identically on both nodes. */
export function checkControl(
  agreement: AgreementLike,
  kind: string,
  rid: string,
  command: string,
  payload: Uint8Array,
  now = Date.now(),
): ControlDecision {
  const state = agreementState(agreement.doc, agreement, now)
  if (state !== 'active') return { ok: false, reason: `the agreement is ${state}` }
  const grant = agreement.doc.body.grants.find(
    (g) =>
      g.data === 'control' &&
      (g.kinds as string[]).includes(kind) &&
      (!g.rids || g.rids.includes(rid)) &&
      g.commands.includes(command),
  )
  if (grant?.data !== 'control') {
    return { ok: false, reason: `no control grant for ${command} on ${kind} ${rid}` }
  }
  let decoded: { v?: unknown; until?: unknown }
  try {
    decoded = decodeCbor(payload) as typeof decoded
  } catch {
    return { ok: false, reason: 'the command payload is not CBOR' }
  }
  if (typeof decoded !== 'object' || decoded === null)
    return { ok: false, reason: 'the command payload is not a map' }
  if (typeof decoded.until === 'number' && decoded.until < now)
    return { ok: false, reason: 'the command has expired (until is past)' }
  const bounds = grant.bounds?.[command]
  if (bounds) {
    if (typeof decoded.v !== 'number' || !Number.isFinite(decoded.v))
      return { ok: false, reason: `${command} needs a numeric v within its bounds` }
    if (bounds.min !== undefined && decoded.v < bounds.min)
      return { ok: false, reason: `v ${decoded.v} is below the bound ${bounds.min}` }
    if (bounds.max !== undefined && decoded.v > bounds.max)
      return { ok: false, reason: `v ${decoded.v} is above the bound ${bounds.max}` }
  }
  return { ok: true, grant }
}

/** `oe.send.<alias>.ctl.<kind>.<rid>.<command>` → its parts, or undefined. */
export function parseSendSubject(
  subject: string,
): { alias: string; kind: string; rid: string; command: string } | undefined {
  const tokens = subject.split('.')
  if (tokens.length !== 7 || tokens[0] !== 'oe' || tokens[1] !== 'send' || tokens[3] !== 'ctl')
    return undefined
  const [, , alias, , kind, rid, command] = tokens as [string, string, string, string, string, string, string]
  if (!isResourceKind(kind) || !isResourceId(rid) || !/^[a-z][a-z0-9_]{0,63}$/.test(command)) return undefined
  return { alias, kind, rid, command }
}

/** The bytes the consumer signs for a command. */
export function controlBytes(command: ControlCommand): Uint8Array {
  return encodeCanonical({ type: 'control', ...command })
}

export function parseControlCommand(value: unknown): ControlCommand {
  const raw = value as Partial<ControlCommand> | null
  if (
    typeof raw !== 'object' ||
    raw === null ||
    typeof raw.id !== 'string' ||
    !/^[0-9a-f]{64}$/.test(raw.id) ||
    typeof raw.kind !== 'string' ||
    typeof raw.rid !== 'string' ||
    typeof raw.command !== 'string' ||
    !(raw.payload instanceof Uint8Array) ||
    raw.payload.length > 16 * 1024 ||
    typeof raw.at !== 'number'
  ) {
    throw new AgreementFormatError(
      'control',
      'is not a control command {id, kind, rid, command, payload, at}',
    )
  }
  return { id: raw.id, kind: raw.kind, rid: raw.rid, command: raw.command, payload: raw.payload, at: raw.at }
}

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

/** A command name, as grants list them. */
const COMMAND = /^[a-z][a-z0-9_]{0,63}$/

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

/** The site of a resource, when known. */
export type SiteLookup = (kind: string, rid: string) => string | undefined

/**
 * What a node knows of the provider's sites, for grants limited to sites. The provider passes
 * its `siteOf` and refuses a resource whose site it does not know. The consumer knows only what
 * the provider's standing data told it: it passes that with `ignoreSites`, refuses a known site
 * outside the grant and leaves an unknown one to the provider (as the scope check does).
 */
export interface ControlSites {
  siteOf?: SiteLookup
  ignoreSites?: boolean
}

/** A command the grants cover, or why none does. */
type GrantMatch = { ok: true; grants: (Grant & { data: 'control' })[] } | { ok: false; reason: string }

function grantsFor(
  grants: Grant[],
  kind: string,
  rid: string,
  command: string,
  sites: ControlSites,
): GrantMatch {
  const covering = grants.filter(
    (g): g is Grant & { data: 'control' } =>
      g.data === 'control' &&
      (g.kinds as string[]).includes(kind) &&
      (!g.rids || g.rids.includes(rid)) &&
      g.commands.includes(command),
  )
  if (covering.length === 0) return { ok: false, reason: `no control grant for ${command} on ${kind} ${rid}` }
  const site = sites.siteOf?.(kind, rid)
  const atSite = covering.filter(
    (g) => !g.sites || (site === undefined ? sites.ignoreSites === true : g.sites.includes(site)),
  )
  if (atSite.length > 0) return { ok: true, grants: atSite }
  const granted = [...new Set(covering.flatMap((g) => g.sites ?? []))].join(', ')
  return {
    ok: false,
    reason:
      site === undefined
        ? `the site of ${kind} ${rid} is not known; the control grant covers only ${granted}`
        : `${kind} ${rid} is at site ${site}; the control grant covers only ${granted}`,
  }
}

/** Why `v` is outside a grant's bounds for `command`, or undefined when it is within them. */
function outOfBounds(grant: Grant & { data: 'control' }, command: string, v: unknown): string | undefined {
  const bounds = grant.bounds?.[command]
  if (!bounds) return undefined
  if (typeof v !== 'number' || !Number.isFinite(v)) return `${command} needs a numeric v within its bounds`
  if (bounds.min !== undefined && v < bounds.min) return `v ${v} is below the bound ${bounds.min}`
  if (bounds.max !== undefined && v > bounds.max) return `v ${v} is above the bound ${bounds.max}`
  return undefined
}

const isPlainMap = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' &&
  value !== null &&
  (Object.getPrototypeOf(value) === Object.prototype || Object.getPrototypeOf(value) === null)

/**
 * Whether an agreement lets its consumer send this command, checked identically on both nodes
 * (each with what it knows of the provider's sites, see `ControlSites`). Of several grants
 * covering the command, the first whose bounds allow it applies.
 */
export function checkControl(
  agreement: AgreementLike,
  kind: string,
  rid: string,
  command: string,
  payload: Uint8Array,
  now = Date.now(),
  sites: ControlSites = {},
): ControlDecision {
  const state = agreementState(agreement.doc, agreement, now)
  if (state !== 'active') return { ok: false, reason: `the agreement is ${state}` }
  const match = grantsFor(agreement.doc.body.grants, kind, rid, command, sites)
  if (!match.ok) return match
  let decoded: unknown
  try {
    decoded = decodeCbor(payload)
  } catch {
    return { ok: false, reason: 'the command payload is not CBOR' }
  }
  // A text-keyed map only: from a list, bytes or a map with other keys `v` and `until` could
  // not be read, and their checks would pass unseen.
  if (!isPlainMap(decoded)) return { ok: false, reason: 'the command payload is not a map' }
  if (decoded.until !== undefined && (typeof decoded.until !== 'number' || !Number.isFinite(decoded.until)))
    return { ok: false, reason: 'until must be a time in epoch milliseconds' }
  if (typeof decoded.until === 'number' && decoded.until < now)
    return { ok: false, reason: 'the command has expired (until is past)' }
  let refusal = ''
  for (const grant of match.grants) {
    const reason = outOfBounds(grant, command, decoded.v)
    if (reason === undefined) return { ok: true, grant }
    refusal ||= reason
  }
  return { ok: false, reason: refusal }
}

/** `oe.send.<alias>.ctl.<kind>.<rid>.<command>` → its parts, or undefined. */
export function parseSendSubject(
  subject: string,
): { alias: string; kind: string; rid: string; command: string } | undefined {
  const tokens = subject.split('.')
  if (tokens.length !== 7 || tokens[0] !== 'oe' || tokens[1] !== 'send' || tokens[3] !== 'ctl')
    return undefined
  const [, , alias, , kind, rid, command] = tokens as [string, string, string, string, string, string, string]
  if (!isResourceKind(kind) || !isResourceId(rid) || !COMMAND.test(command)) return undefined
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
    // Each becomes one token of the subject the provider publishes on, oe.ctl.<kind>.<rid>.<command>.
    !isResourceKind(raw.kind) ||
    !isResourceId(raw.rid) ||
    typeof raw.command !== 'string' ||
    !COMMAND.test(raw.command) ||
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

/** How old a command may be when the provider receives it (held through an outage, say). */
export const CONTROL_MAX_AGE_MS = 10 * 60_000
/** How far ahead of the provider's clock a command's time may be (clock skew). */
export const CONTROL_MAX_SKEW_MS = 60_000

/**
 * Why a command issued at `at` (epoch ms: when the consumer's application published it) is too
 * old or too far ahead to act on now, or undefined. A limit queued for hours while the link was
 * down must not arrive looking fresh.
 */
export function commandTimeProblem(at: number, now = Date.now()): string | undefined {
  if (!Number.isFinite(at)) return 'the command has no valid time'
  if (at > now + CONTROL_MAX_SKEW_MS)
    return `the command is dated ${Math.round((at - now) / 1000)} s ahead of this node's clock`
  if (now - at > CONTROL_MAX_AGE_MS)
    return `the command was issued ${Math.round((now - at) / 1000)} s ago, more than ${CONTROL_MAX_AGE_MS / 1000} s`
  return undefined
}

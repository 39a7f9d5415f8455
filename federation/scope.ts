/**
 * The scope compiler: an agreement's grants become the provider streams to read, a record
 * check both ends run on every record (kinds, rids, sites, quantities, types),
 * the projection of standing data to the granted attributes, and the minimum interval between
 * readings of one resource and quantity.
 */
import { isQuantity, isResourceId, isResourceKind, type Resource } from '../data-plane/index.ts'
import type { AgreementBody, Grant } from './agreement.ts'

/** The provider streams data is read from, by the subject's second token. */
export type SourceArea = 'tel' | 'std' | 'evt'
export const SOURCE_AREAS: readonly SourceArea[] = ['tel', 'std', 'evt']
export const AREA_STREAM: Record<SourceArea, string> = { tel: 'OE_TEL', std: 'OE_STD', evt: 'OE_EVT' }
const AREA_DATA: Record<SourceArea, Grant['data']> = { tel: 'telemetry', std: 'standing', evt: 'events' }

export type Decision = { ok: true; grant: Grant } | { ok: false; reason: DropReason }
export type DropReason =
  | 'not_granted'
  | 'bad_subject'
  | 'site'
  | 'min_interval'
  | 'attrs'
  | 'time'
  | 'payload'
  | 'oversize'

export interface CompiledScope {
  /** The provider streams the grants read from. */
  areas: SourceArea[]
  /**
   * Which grant allows a record with this subject (`oe.tel.…`, `oe.std.…`, `oe.evt.…`).
   * `siteOf` answers the site of a resource when known; grants limited to sites need it. The
   * provider refuses a resource whose site it does not know. The consumer passes `ignoreSites`:
   * it knows only the sites that standing data received under the agreement told it, so it
   * refuses a known site outside the grant and lets an unknown one pass.
   */
  check(
    subject: string,
    siteOf?: (kind: string, rid: string) => string | undefined,
    ignoreSites?: boolean,
  ): Decision
}

function grantAllows(
  grant: Grant,
  tokens: string[],
  siteOf?: (kind: string, rid: string) => string | undefined,
  ignoreSites = false,
): boolean | 'site' {
  const kind = tokens[2]!
  const rid = tokens[3]!
  if (!(grant.kinds as string[]).includes(kind)) return false
  if (grant.rids && !grant.rids.includes(rid)) return false
  switch (grant.data) {
    case 'telemetry':
      if (tokens.length !== 5 || !grant.quantities.includes(tokens[4]!)) return false
      break
    case 'standing':
      if (tokens.length !== 4) return false
      break
    case 'events':
      if (tokens.length !== 5 || !grant.types.includes(tokens[4]!)) return false
      break
    case 'control':
      return false
  }
  if (grant.sites) {
    const site = siteOf?.(kind, rid)
    if (site === undefined ? !ignoreSites : !grant.sites.includes(site)) return 'site'
  }
  return true
}

export function compileScope(body: AgreementBody): CompiledScope {
  const granted = new Set(body.grants.map((grant) => grant.data))
  // Decisions that do not ask for a resource's site depend on the subject alone: remembered.
  const bySites = body.grants.some((grant) => grant.sites !== undefined)
  const remembered = new Map<string, Decision>()
  const decide = (
    subject: string,
    siteOf: ((kind: string, rid: string) => string | undefined) | undefined,
    ignoreSites?: boolean,
  ): Decision => {
    if (bySites) return check(subject, siteOf, ignoreSites)
    let decision = remembered.get(subject)
    if (decision === undefined) {
      if (remembered.size >= REMEMBERED_DECISIONS) remembered.clear()
      decision = check(subject, siteOf, ignoreSites)
      remembered.set(subject, decision)
    }
    return decision
  }
  return {
    areas: SOURCE_AREAS.filter((area) => granted.has(AREA_DATA[area])),
    check: decide,
  }

  function check(
    subject: string,
    siteOf: ((kind: string, rid: string) => string | undefined) | undefined,
    ignoreSites?: boolean,
  ): Decision {
    const tokens = subject.split('.')
    const area = tokens[1] as SourceArea
    if (tokens[0] !== 'oe' || !Object.hasOwn(AREA_DATA, area) || tokens.length < 4) {
      return { ok: false, reason: 'bad_subject' }
    }
    // Every token must be what the model allows: no wildcards, no empty or odd ids.
    if (!isResourceKind(tokens[2]) || !isResourceId(tokens[3])) return { ok: false, reason: 'bad_subject' }
    if (area === 'tel' && (tokens.length !== 5 || !isQuantity(tokens[4])))
      return { ok: false, reason: 'bad_subject' }
    if (area === 'evt' && (tokens.length !== 5 || !/^[a-z][a-z0-9_]{0,63}$/.test(tokens[4]!))) {
      return { ok: false, reason: 'bad_subject' }
    }
    if (area === 'std' && tokens.length !== 4) return { ok: false, reason: 'bad_subject' }
    const data = AREA_DATA[area]
    let siteRefused = false
    let best: Grant | undefined
    for (const grant of body.grants) {
      if (grant.data !== data) continue
      const allowed = grantAllows(grant, tokens, siteOf, ignoreSites)
      if (allowed === 'site') siteRefused = true
      if (allowed !== true) continue
      // Of several grants, the one with the shortest interval (the most generous) applies.
      if (!best || minInterval(grant) < minInterval(best)) best = grant
    }
    if (best) return { ok: true, grant: best }
    return { ok: false, reason: siteRefused ? 'site' : 'not_granted' }
  }
}

/** How many subjects' decisions a compiled scope remembers before it starts afresh. */
const REMEMBERED_DECISIONS = 100_000

export const minInterval = (grant: Grant): number =>
  grant.data === 'telemetry' ? (grant.minIntervalMs ?? 0) : 0

/** Standing data reduced to the granted attributes; fields not listed never leave the provider. */
export function projectResource(resource: Resource, grant: Grant): Resource {
  const attrs: Record<string, unknown> = {}
  if (grant.data === 'standing') {
    for (const name of grant.attrs)
      if (Object.hasOwn(resource.attrs ?? {}, name)) attrs[name] = resource.attrs[name]
  }
  const projected: Resource = { kind: resource.kind, rid: resource.rid, attrs, updated: resource.updated }
  if (grant.data === 'standing' && grant.attrs.includes('site') && resource.site !== undefined)
    projected.site = resource.site
  if (grant.data === 'standing' && grant.attrs.includes('name') && resource.name !== undefined)
    projected.name = resource.name
  return projected
}

/** Whether projected standing data holds only what the grant allows (the consumer's re-check). */
export function withinProjection(resource: Resource, grant: Grant): boolean {
  if (grant.data !== 'standing') return false
  if (resource.site !== undefined && !grant.attrs.includes('site')) return false
  if (resource.name !== undefined && !grant.attrs.includes('name')) return false
  return Object.keys(resource.attrs ?? {}).every((name) => grant.attrs.includes(name))
}

/**
 * At most one reading per resource and quantity per interval: a reading passes when it is at
 * least the interval after the last one that passed. (The first reading of an interval is sent
 * at once, rather than holding readings back until the interval ends.)
 */
export class IntervalGate {
  private readonly last = new Map<string, number>()

  pass(key: string, t: number, intervalMs: number): boolean {
    if (intervalMs <= 0) return true
    const previous = this.last.get(key)
    if (previous !== undefined && t < previous + intervalMs) return false
    this.last.set(key, t)
    if (this.last.size > 1_000_000) this.last.clear()
    return true
  }
}

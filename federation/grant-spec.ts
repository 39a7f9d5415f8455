/**
 * The grant spec of the CLI (ARCHITECTURE §10): `<data>:<key>=<v>[,<v>…][;<key>=…]`, e.g.
 * `telemetry:kinds=evse;quantities=power,energy_import;minInterval=60s`, and the plain-words
 * description of a grant that operators review before they sign.
 */

import { type Grant, parseGrant } from './agreement.ts'
import { AgreementFormatError } from './errors.ts'

const LIST_KEYS = ['kinds', 'rids', 'sites', 'quantities', 'attrs', 'types', 'commands'] as const

function parseInterval(value: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(value.trim())
  if (!match) {
    throw new AgreementFormatError(
      'grant.minInterval',
      `'${value}' is not a duration with a unit (e.g. 500ms, 60s, 5m)`,
    )
  }
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match[2]!] ?? 1
  return Math.round(Number(match[1]) * unit)
}

/** Parse one `--grant` value into a validated grant. */
export function parseGrantSpec(spec: string): Grant {
  const colon = spec.indexOf(':')
  if (colon < 0) throw new AgreementFormatError('grant', `'${spec}' is not <data>:<key>=<values>[;…]`)
  const data = spec.slice(0, colon).trim()
  const grant: Record<string, unknown> = { data }
  const bounds: { min?: number; max?: number } = {}
  for (const part of spec.slice(colon + 1).split(';')) {
    if (part.trim() === '') continue
    const equals = part.indexOf('=')
    if (equals < 0) throw new AgreementFormatError('grant', `'${part}' is not <key>=<values>`)
    const key = part.slice(0, equals).trim()
    const value = part.slice(equals + 1).trim()
    if (key === 'minInterval') grant.minIntervalMs = parseInterval(value)
    else if (key === 'min' || key === 'max') {
      const bound = Number(value)
      if (value === '' || !Number.isFinite(bound))
        throw new AgreementFormatError(`grant.${key}`, `'${value}' is not a number`)
      bounds[key] = bound
    } else if ((LIST_KEYS as readonly string[]).includes(key)) {
      grant[key] = value
        .split(',')
        .map((item) => item.trim())
        .filter((item) => item !== '')
    } else {
      throw new AgreementFormatError(
        `grant.${key}`,
        `unknown key (one of ${[...LIST_KEYS, 'minInterval', 'min', 'max'].join(', ')})`,
      )
    }
  }
  if (bounds.min !== undefined || bounds.max !== undefined) {
    // min/max bound the value `v` of every command the grant lists.
    if (data !== 'control') throw new AgreementFormatError('grant.max', 'min and max apply to control grants')
    const commands = Array.isArray(grant.commands) ? (grant.commands as string[]) : []
    grant.bounds = Object.fromEntries(commands.map((command) => [command, { ...bounds }]))
  }
  return parseGrant(grant, 'grant')
}

const join = (items: readonly string[]): string =>
  items.length <= 1 ? (items[0] ?? '') : `${items.slice(0, -1).join(', ')} and ${items[items.length - 1]}`

function scope(grant: Grant): string {
  const parts = [`${join(grant.kinds)} resources`]
  if (grant.rids) parts.push(`only ${join(grant.rids)}`)
  if (grant.sites) parts.push(`at site${grant.sites.length > 1 ? 's' : ''} ${join(grant.sites)}`)
  return parts.join(', ')
}

function formatInterval(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000} h`
  if (ms % 60_000 === 0) return `${ms / 60_000} min`
  if (ms % 1000 === 0) return `${ms / 1000} s`
  return `${ms} ms`
}

/** One sentence an operator can check before signing. */
export function describeGrant(grant: Grant, provider: string, consumer: string): string {
  switch (grant.data) {
    case 'telemetry':
      return `${consumer} receives ${join(grant.quantities)} readings of ${provider}'s ${scope(grant)}${
        grant.minIntervalMs ? `, at most one per ${formatInterval(grant.minIntervalMs)}` : ''
      }`
    case 'standing':
      return `${consumer} receives the ${join(grant.attrs)} attributes of ${provider}'s ${scope(grant)} (nothing else of them)`
    case 'events':
      return `${consumer} receives ${join(grant.types)} events of ${provider}'s ${scope(grant)}`
    case 'control': {
      const bounds = Object.entries(grant.bounds ?? {}).map(
        ([command, b]) => `${command} within ${b.min ?? '−∞'}…${b.max ?? '∞'}`,
      )
      return `${consumer} may send ${join(grant.commands)} to ${provider}'s ${scope(grant)}${bounds.length ? ` (${bounds.join('; ')})` : ''}`
    }
  }
}

/**
 * What a version codec (OpenADR 3.0.1, 3.1.0) is, and the lenient reading both share.
 *
 * Lenient in: an explicit `null` in an optional field reads as absent; fields the VTN provisions
 * (id, createdDateTime, modificationDateTime, objectType) are ignored on POST/PUT as the
 * Definition requires; timestamps with a UTC offset, without a zone (read as UTC) or date-only
 * (`0001-01-01`) are accepted and kept as UTC; unknown fields are ignored (dropped, at every
 * depth). Strict out: a codec renders exactly the fields its version's schema defines, and the
 * transport validates every body against the document before it leaves.
 */
import type { OpenAdrVersion } from './contract.ts'
import type { Body, Client, ObjectKind, Operation, StoredObject } from './model.ts'

export interface VersionCodec {
  version: OpenAdrVersion
  /** Lenient pre-reading of a request body, before the schema check. */
  prepare(kind: ObjectKind, body: unknown, client: Client): unknown
  /** A validated request body → the VTN's body (known fields only). */
  decode(kind: ObjectKind, body: Body, client: Client): Body
  /** The VTN's object → this version's wire object; undefined when this version cannot show it. */
  encode(object: StoredObject, view?: { targets?: string[] }): Body | undefined
  /** The targets a query asks for (3.1.0 `targets`; 3.0.1 `targetType` + `targetValues`). */
  queryTargets(query: Record<string, unknown>): string[] | undefined
  /** The notification `operation` for an object operation. */
  notificationOperation(operation: Operation): string
  /** The targets in this version's wire form. */
  renderTargets(targets: readonly string[]): unknown
}

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value)

/** Drop `null` members of objects, at every depth (explicit null = absent). */
export function stripNulls(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(stripNulls)
  if (!isObject(value)) return value
  const out: Record<string, unknown> = {}
  for (const [key, inner] of Object.entries(value)) if (inner !== null) out[key] = stripNulls(inner)
  return out
}

const DATE_ONLY = /^\d{4}-\d{2}-\d{2}$/
const NO_ZONE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?$/
const WITH_ZONE = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:?\d{2})$/

/** An RFC 3339 / ISO 8601 timestamp as UTC (`…Z`), or the input unchanged when it is not one. */
export function toUtc(value: unknown): unknown {
  if (typeof value !== 'string') return value
  let text = value.trim()
  if (DATE_ONLY.test(text)) text = `${text}T00:00:00Z`
  else if (NO_ZONE.test(text)) text = `${text}Z`
  else if (!WITH_ZONE.test(text)) return value
  text = text.replace(' ', 'T').replace(/([+-]\d{2})(\d{2})$/, '$1:$2')
  const ms = Date.parse(text)
  if (!Number.isFinite(ms)) return value
  return isoString(ms)
}

/** `Date#toISOString`, also for years before 1000 and after 9999 (ISO's expanded years aside). */
export function isoString(ms: number): string {
  return new Date(ms).toISOString()
}

/** Normalise `intervalPeriod.start` wherever an intervalPeriod sits. */
export function normaliseTimes(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(normaliseTimes)
  if (!isObject(value)) return value
  const out: Record<string, unknown> = {}
  for (const [key, inner] of Object.entries(value)) {
    if (key === 'intervalPeriod' && isObject(inner)) {
      out[key] = inner.start === undefined ? { ...inner } : { ...inner, start: toUtc(inner.start) }
    } else {
      out[key] = normaliseTimes(inner)
    }
  }
  return out
}

const METADATA = ['id', 'createdDateTime', 'modificationDateTime', 'objectType'] as const

/** Shared lenient pre-reading: nulls, VTN-provisioned fields, timestamps. */
export function prepareCommon(body: unknown, keepObjectType = false): unknown {
  const stripped = stripNulls(body)
  if (!isObject(stripped)) return stripped
  const out = { ...stripped }
  for (const field of METADATA) if (!(keepObjectType && field === 'objectType')) delete out[field]
  return normaliseTimes(out)
}

// ---- deep projection to the fields the schemas define (unknown fields are dropped) -------

const pickDefined = (value: Record<string, unknown>, fields: readonly string[]): Body => {
  const out: Body = {}
  for (const field of fields) if (value[field] !== undefined) out[field] = value[field]
  return out
}

/** Objects in an array cleaned; anything else is left for the schema to refuse (never dropped silently). */
const mapArray = <T>(value: unknown, each: (item: Record<string, unknown>) => T): T[] | undefined =>
  Array.isArray(value) ? value.map((item) => (isObject(item) ? each(item) : (item as T))) : undefined

export const cleanIntervalPeriod = (value: unknown): Body | undefined =>
  isObject(value) ? pickDefined(value, ['start', 'duration', 'randomizeStart']) : undefined

export function cleanValuesMap(value: Record<string, unknown>): Body {
  const values = Array.isArray(value.values)
    ? value.values.map((item) => (isObject(item) ? pickDefined(item, ['x', 'y']) : item))
    : value.values
  return { type: value.type, values }
}

export function cleanInterval(value: Record<string, unknown>): Body {
  return dropUndefined({
    id: value.id,
    intervalPeriod: cleanIntervalPeriod(value.intervalPeriod),
    payloads: mapArray(value.payloads, cleanValuesMap),
  })
}

export const EVENT_PAYLOAD_DESCRIPTOR_FIELDS = ['objectType', 'payloadType', 'units', 'currency'] as const
export const REPORT_PAYLOAD_DESCRIPTOR_FIELDS = [
  'objectType',
  'payloadType',
  'readingType',
  'units',
  'accuracy',
  'confidence',
] as const
export const REPORT_DESCRIPTOR_FIELDS = [
  'payloadType',
  'readingType',
  'units',
  'targets',
  'aggregate',
  'startInterval',
  'numIntervals',
  'historical',
  'frequency',
  'repeat',
  'reportIntervals',
] as const

/** A payload descriptor of either direction (programs may carry both), objectType filled in. */
export function cleanPayloadDescriptor(value: Record<string, unknown>, fallback: 'EVENT' | 'REPORT'): Body {
  const isReport =
    value.objectType === 'REPORT_PAYLOAD_DESCRIPTOR' ||
    (value.objectType !== 'EVENT_PAYLOAD_DESCRIPTOR' &&
      (fallback === 'REPORT' ||
        value.readingType !== undefined ||
        value.accuracy !== undefined ||
        value.confidence !== undefined))
  return isReport
    ? { ...pickDefined(value, REPORT_PAYLOAD_DESCRIPTOR_FIELDS), objectType: 'REPORT_PAYLOAD_DESCRIPTOR' }
    : { ...pickDefined(value, EVENT_PAYLOAD_DESCRIPTOR_FIELDS), objectType: 'EVENT_PAYLOAD_DESCRIPTOR' }
}

export function cleanReportResource(value: Record<string, unknown>): Body {
  return dropUndefined({
    resourceName: value.resourceName,
    intervalPeriod: cleanIntervalPeriod(value.intervalPeriod),
    intervals: mapArray(value.intervals, cleanInterval),
  })
}

export function cleanObjectOperation(value: Record<string, unknown>): Body {
  return pickDefined(value, ['objects', 'operations', 'callbackUrl', 'bearerToken'])
}

/**
 * The nested parts of a body, projected to their schema fields. Targets (top level and in
 * report descriptors) are left to the version codec.
 */
export function cleanNested(kind: ObjectKind, body: Body): Body {
  const out = { ...body }
  if (out.intervalPeriod !== undefined) out.intervalPeriod = cleanIntervalPeriod(out.intervalPeriod)
  if (out.intervals !== undefined) out.intervals = mapArray(out.intervals, cleanInterval)
  if (out.payloadDescriptors !== undefined) {
    out.payloadDescriptors = mapArray(out.payloadDescriptors, (item) =>
      cleanPayloadDescriptor(item, kind === 'report' ? 'REPORT' : 'EVENT'),
    )
  }
  if (out.reportDescriptors !== undefined)
    out.reportDescriptors = mapArray(out.reportDescriptors, (item) =>
      pickDefined(item, REPORT_DESCRIPTOR_FIELDS),
    )
  if (out.attributes !== undefined) out.attributes = mapArray(out.attributes, cleanValuesMap)
  if (out.programDescriptions !== undefined)
    out.programDescriptions = mapArray(out.programDescriptions, (item) => pickDefined(item, ['URL']))
  if (kind === 'report' && out.resources !== undefined)
    out.resources = mapArray(out.resources, cleanReportResource)
  if (out.objectOperations !== undefined)
    out.objectOperations = mapArray(out.objectOperations, cleanObjectOperation)
  return out
}

export function dropUndefined<T extends Record<string, unknown>>(value: T): T {
  const out: Record<string, unknown> = {}
  for (const [key, inner] of Object.entries(value)) if (inner !== undefined) out[key] = inner
  return out as T
}

/** Metadata every rendered object starts with. */
export function metadata(object: StoredObject, objectType: string): Body {
  return {
    id: object.id,
    createdDateTime: object.createdDateTime,
    modificationDateTime: object.modificationDateTime,
    objectType,
  }
}

export { isObject, pickDefined }

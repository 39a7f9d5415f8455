/**
 * OpenADR 3.0.1 codec. What differs from 3.1.0, and how the VTN's one store serves both:
 *
 * - Targets are valuesMaps (`{type: "GROUP", values: ["g1"]}`) where 3.1.0 has strings. A
 *   3.0.1 target of type T and value v is the string `T:v`, except type `TARGET`, which is the
 *   bare string v; so 3.1.0 `"group1"` reads in 3.0.1 as `{type: "TARGET", values: ["group1"]}`
 *   and 3.0.1 `{type: "GROUP", values: ["g1"]}` in 3.1.0 as `"GROUP:g1"`. Queries use
 *   `targetType` + `targetValues` the same way.
 * - Intervals and interval periods must carry a start: a 3.1.0 event whose intervals follow one
 *   another is rendered with each start computed (timing.ts); an event without intervals has
 *   `intervals: []`.
 * - Objects the 3.0.1 schema cannot express are left out of 3.0.1 answers: a subscription
 *   without `programID` (required in 3.0.1).
 * - Notifications name operations POST, PUT, DELETE.
 * - Fields only 3.0.1 has (program `retailerName`, …) are kept and shown to 3.0.1 clients.
 */
import {
  cleanNested,
  dropUndefined,
  isObject,
  isoString,
  metadata,
  pickDefined,
  prepareCommon,
  type VersionCodec,
} from './codec.ts'
import {
  type Body,
  type Client,
  OBJECT_TYPES,
  type ObjectKind,
  type StoredObject,
  WRITABLE_FIELDS,
} from './model.ts'
import { resolveEvent } from './timing.ts'

const FIELDS: Record<ObjectKind, readonly string[]> = {
  program: [
    'programName',
    'programLongName',
    'retailerName',
    'retailerLongName',
    'programType',
    'country',
    'principalSubdivision',
    'timeZoneOffset',
    'intervalPeriod',
    'programDescriptions',
    'bindingEvents',
    'localPrice',
    'payloadDescriptors',
    'targets',
  ],
  event: [
    'programID',
    'eventName',
    'priority',
    'targets',
    'reportDescriptors',
    'payloadDescriptors',
    'intervalPeriod',
    'intervals',
  ],
  report: ['programID', 'eventID', 'clientName', 'reportName', 'payloadDescriptors', 'resources'],
  subscription: ['clientName', 'programID', 'objectOperations', 'targets'],
  ven: ['venName', 'attributes', 'targets'],
  resource: ['resourceName', 'venID', 'attributes', 'targets'],
}

const REPORT_DESCRIPTOR_FIELDS = [
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
]

export const PLAIN_TARGET_TYPE = 'TARGET'

/** 3.0.1 valuesMap targets → target strings. */
export function targetsFromValuesMaps(value: unknown): string[] | undefined {
  if (!Array.isArray(value)) return undefined
  const out: string[] = []
  for (const item of value) {
    if (!isObject(item) || typeof item.type !== 'string' || !Array.isArray(item.values)) continue
    for (const entry of item.values) {
      const text = typeof entry === 'object' ? JSON.stringify(entry) : String(entry)
      out.push(item.type === PLAIN_TARGET_TYPE ? text : `${item.type}:${text}`)
    }
  }
  return out
}

/** Target strings → 3.0.1 valuesMaps, one per type, in first-seen order. */
export function targetsToValuesMaps(targets: readonly string[]): { type: string; values: string[] }[] {
  const byType = new Map<string, string[]>()
  for (const target of targets) {
    const colon = target.indexOf(':')
    const [type, value] =
      colon > 0 ? [target.slice(0, colon), target.slice(colon + 1)] : [PLAIN_TARGET_TYPE, target]
    const values = byType.get(type) ?? []
    values.push(value)
    byType.set(type, values)
  }
  return [...byType].map(([type, values]) => ({ type, values }))
}

/** Fill the starts 3.0.1 requires from the resolved timing of the event. */
function withStarts(body: Body, created: number): Body {
  const intervals = (body.intervals as Body[] | undefined) ?? []
  const period = body.intervalPeriod as Body | undefined
  const resolved = resolveEvent(body as never, created, () => 0)
  const out: Body = { ...body }
  if (period && period.start === undefined)
    out.intervalPeriod = { ...period, start: isoString(resolved.start) }
  out.intervals = intervals.map((interval, index) => {
    const own = interval.intervalPeriod as Body | undefined
    if (!own || own.start !== undefined) return interval
    const start = resolved.intervals[index]?.start ?? resolved.start
    return { ...interval, intervalPeriod: { ...own, start: isoString(start) } }
  })
  return out
}

export const v301: VersionCodec = {
  version: '3.0.1',

  prepare(_kind: ObjectKind, body: unknown, _client: Client): unknown {
    return prepareCommon(body)
  },

  decode(kind: ObjectKind, body: Body, _client: Client): Body {
    const out = cleanNested(kind, pickDefined(body, WRITABLE_FIELDS[kind]))
    // VENs and BL write clientID through the token (3.0.1 has no clientID field).
    delete out.clientID
    if (out.targets !== undefined) out.targets = targetsFromValuesMaps(out.targets)
    if (Array.isArray(out.reportDescriptors)) {
      out.reportDescriptors = out.reportDescriptors.map((item: Body) =>
        item.targets === undefined ? item : { ...item, targets: targetsFromValuesMaps(item.targets) },
      )
    }
    return out
  },

  encode(object: StoredObject, view: { targets?: string[] } = {}): Body | undefined {
    let body: Body = { ...object.body }
    if (object.kind === 'subscription' && body.programID === undefined) return undefined
    const targets = view.targets ?? (body.targets as string[] | undefined)
    body.targets = targets && targets.length > 0 ? targetsToValuesMaps(targets) : undefined
    if (object.kind === 'event') {
      body = withStarts(body, Date.parse(object.createdDateTime))
      body.intervals ??= []
    }
    if (object.kind === 'report' && Array.isArray(body.resources)) {
      const created = Date.parse(object.createdDateTime)
      body.resources = body.resources.map((resource: Body) => withStarts(resource, created))
    }
    if (Array.isArray(body.reportDescriptors)) {
      body.reportDescriptors = body.reportDescriptors.map((item: Body) =>
        dropUndefined({
          ...pickDefined(item, REPORT_DESCRIPTOR_FIELDS),
          targets: Array.isArray(item.targets) ? targetsToValuesMaps(item.targets as string[]) : undefined,
        }),
      )
    }
    if (object.kind === 'program' && body.intervalPeriod !== undefined) {
      const period = body.intervalPeriod as Body
      if (period.start === undefined) body.intervalPeriod = { ...period, start: object.createdDateTime }
    }
    return dropUndefined({
      ...metadata(object, OBJECT_TYPES[object.kind]),
      ...pickDefined(body, FIELDS[object.kind]),
    })
  },

  queryTargets(query: Record<string, unknown>): string[] | undefined {
    const values = query.targetValues
    if (!Array.isArray(values)) return undefined
    const type = typeof query.targetType === 'string' ? query.targetType : PLAIN_TARGET_TYPE
    return values.map((value) => (type === PLAIN_TARGET_TYPE ? String(value) : `${type}:${String(value)}`))
  },

  notificationOperation: (operation) =>
    operation === 'CREATE' ? 'POST' : operation === 'UPDATE' ? 'PUT' : 'DELETE',

  renderTargets: (targets) => targetsToValuesMaps(targets),
}

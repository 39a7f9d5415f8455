/**
 * OpenADR 3.1.0 codec. Targets are strings; vens and resources are written as BL or VEN
 * requests (`objectType` BL_VEN_REQUEST / VEN_VEN_REQUEST, BL_RESOURCE_REQUEST /
 * VEN_RESOURCE_REQUEST), which this reads from the client's role when it is missing or does not
 * fit (a VEN cannot write as BL); payload descriptors get their `objectType` when missing.
 */
import {
  cleanNested,
  dropUndefined,
  isObject,
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

const FIELDS: Record<ObjectKind, readonly string[]> = {
  program: [
    'programName',
    'intervalPeriod',
    'programDescriptions',
    'payloadDescriptors',
    'attributes',
    'targets',
  ],
  event: [
    'programID',
    'eventName',
    'duration',
    'priority',
    'targets',
    'reportDescriptors',
    'payloadDescriptors',
    'intervalPeriod',
    'intervals',
  ],
  report: ['eventID', 'clientName', 'reportName', 'payloadDescriptors', 'resources', 'clientID'],
  subscription: ['clientName', 'programID', 'objectOperations', 'targets', 'clientID'],
  ven: ['clientID', 'targets', 'venName', 'attributes'],
  resource: ['clientID', 'targets', 'resourceName', 'venID', 'attributes'],
}

const stringTargets = (value: unknown): string[] | undefined =>
  Array.isArray(value) ? value.filter((item): item is string => typeof item === 'string') : undefined

export const v310: VersionCodec = {
  version: '3.1.0',

  prepare(kind: ObjectKind, body: unknown, client: Client): unknown {
    const prepared = prepareCommon(body, kind === 'ven' || kind === 'resource')
    if (!isObject(prepared)) return prepared
    if (kind === 'ven') prepared.objectType = client.role === 'bl' ? 'BL_VEN_REQUEST' : 'VEN_VEN_REQUEST'
    if (kind === 'resource')
      prepared.objectType = client.role === 'bl' ? 'BL_RESOURCE_REQUEST' : 'VEN_RESOURCE_REQUEST'
    if (Array.isArray(prepared.payloadDescriptors)) {
      prepared.payloadDescriptors = prepared.payloadDescriptors.map((item) =>
        isObject(item) && item.objectType === undefined
          ? {
              ...item,
              objectType:
                kind === 'report' ||
                (kind === 'program' && (item.readingType !== undefined || item.accuracy !== undefined))
                  ? 'REPORT_PAYLOAD_DESCRIPTOR'
                  : 'EVENT_PAYLOAD_DESCRIPTOR',
            }
          : item,
      )
    }
    return prepared
  },

  decode(kind: ObjectKind, body: Body, _client: Client): Body {
    const out = cleanNested(kind, pickDefined(body, WRITABLE_FIELDS[kind]))
    if (out.targets !== undefined) out.targets = stringTargets(out.targets)
    if (Array.isArray(out.reportDescriptors)) {
      out.reportDescriptors = out.reportDescriptors.map((item: Body) =>
        item.targets === undefined ? item : { ...item, targets: stringTargets(item.targets) },
      )
    }
    return out
  },

  encode(object: StoredObject, view: { targets?: string[] } = {}): Body | undefined {
    // 3.1.0 requires a clientID on vens and resources; one a 3.0.1 BL made without is not shown
    // here (a list skips it, a read answers 404) rather than failing the whole answer.
    if ((object.kind === 'ven' || object.kind === 'resource') && object.clientID === undefined)
      return undefined
    const body: Body = { ...object.body }
    if (object.clientID !== undefined) body.clientID = object.clientID
    if (view.targets !== undefined) body.targets = view.targets.length > 0 ? view.targets : undefined
    const out = { ...metadata(object, OBJECT_TYPES[object.kind]), ...pickDefined(body, FIELDS[object.kind]) }
    return dropUndefined(out)
  },

  queryTargets(query: Record<string, unknown>): string[] | undefined {
    return stringTargets(query.targets)
  },

  notificationOperation: (operation) => operation,

  renderTargets: (targets) => [...targets],
}

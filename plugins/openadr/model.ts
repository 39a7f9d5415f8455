/**
 * The VTN's own form of OpenADR objects, the same for both protocol versions (version codecs
 * translate to and from it). Bodies follow 3.1.0 field names; targets are 3.1.0 target strings
 * (3.0.1 valuesMap targets are mapped, see v301.ts); fields only 3.0.1 knows (program
 * `retailerName`, …) are kept so a 3.0.1 client reads back what it wrote.
 */

export const OBJECT_KINDS = ['program', 'event', 'report', 'subscription', 'ven', 'resource'] as const
export type ObjectKind = (typeof OBJECT_KINDS)[number]

/** `objectType` of each kind (objectTypes in both documents). */
export const OBJECT_TYPES: Record<ObjectKind, string> = {
  program: 'PROGRAM',
  event: 'EVENT',
  report: 'REPORT',
  subscription: 'SUBSCRIPTION',
  ven: 'VEN',
  resource: 'RESOURCE',
}

export type Role = 'ven' | 'bl'

/** Who makes a request: the OAuth client behind the bearer token. */
export interface Client {
  clientId: string
  role: Role
}

export type Body = Record<string, unknown>

export interface StoredObject {
  kind: ObjectKind
  id: string
  /** RFC 3339 UTC. */
  createdDateTime: string
  modificationDateTime: string
  /** The client that owns it (reports, subscriptions, vens, resources); none for BL objects. */
  clientID?: string
  body: Body
  /** The KV revision of this version (in memory only: set when read or written). */
  revision?: number
}

export type Operation = 'CREATE' | 'UPDATE' | 'DELETE'

/** Wire (3.x) and internal fields of each kind that a client may write. */
export const WRITABLE_FIELDS: Record<ObjectKind, readonly string[]> = {
  program: [
    'programName',
    'intervalPeriod',
    'programDescriptions',
    'payloadDescriptors',
    'attributes',
    'targets',
    // 3.0.1 only
    'programLongName',
    'retailerName',
    'retailerLongName',
    'programType',
    'country',
    'principalSubdivision',
    'timeZoneOffset',
    'bindingEvents',
    'localPrice',
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
  report: ['programID', 'eventID', 'clientName', 'reportName', 'payloadDescriptors', 'resources'],
  subscription: ['clientName', 'programID', 'objectOperations', 'targets'],
  ven: ['venName', 'attributes', 'targets', 'clientID'],
  resource: ['resourceName', 'venID', 'attributes', 'targets', 'clientID'],
}

/**
 * The 2030.5 resources the CSIP-AUS client reads (decoded leniently into plain types) and writes
 * (encoded strictly, in sep.xsd sequence order, CSIP-AUS extension elements last).
 */
import {
  activePower,
  attribute,
  boolean,
  type Content,
  type CsipVersion,
  child,
  children,
  hexBinary,
  integer,
  integerAttribute,
  link,
  readActivePower,
  text,
  writeXml,
  type XmlNode,
} from './codec.ts'

export interface ListPage<T> {
  href?: string
  all: number
  results: number
  pollRate?: number
  items: T[]
}

export interface DeviceCapability {
  href?: string
  pollRate?: number
  timeLink?: string
  endDeviceListLink?: string
  mirrorUsagePointListLink?: string
  selfDeviceLink?: string
}

export interface ServerTime {
  /** Server time, epoch seconds. */
  currentTime: number
  quality?: number
}

export interface EndDevice {
  href?: string
  lfdi?: string
  sfdi?: number
  enabled?: boolean
  changedTime?: number
  postRate?: number
  derListLink?: string
  fsaListLink?: string
  registrationLink?: string
  subscriptionListLink?: string
  connectionPointLink?: string
}

export interface Registration {
  pin?: number
  pollRate?: number
}

export interface FunctionSetAssignments {
  href?: string
  mrid?: string
  derProgramListLink?: string
}

export interface DerProgram {
  href?: string
  mrid?: string
  primacy: number
  defaultControlLink?: string
  controlListLink?: string
}

/** The DERControlBase modes CSIP-AUS uses, in W (ActivePower scaled) or as booleans. */
export interface DerControlBase {
  opModExpLimW?: number
  opModImpLimW?: number
  opModGenLimW?: number
  opModLoadLimW?: number
  opModConnect?: boolean
  opModEnergize?: boolean
}

/** EventStatus.currentStatus (2030.5 Table 25). */
export const EVENT_STATUS = {
  scheduled: 0,
  active: 1,
  cancelled: 2,
  cancelledWithRandomization: 3,
  superseded: 4,
} as const

export interface DerControl {
  href?: string
  mrid: string
  /** Epoch seconds. */
  creationTime: number
  currentStatus: number
  potentiallySuperseded: boolean
  /** Epoch seconds and seconds. */
  start: number
  duration: number
  randomizeStart: number
  randomizeDuration: number
  replyTo?: string
  responseRequired: number
  base: DerControlBase
}

export interface DefaultDerControl {
  href?: string
  mrid?: string
  base: DerControlBase
  /** Default ramp rate, hundredths of a percent of setMaxW per second (reported back in DERSettings). */
  setGradW?: number
}

export interface Der {
  href?: string
  capabilityLink?: string
  settingsLink?: string
  statusLink?: string
  availabilityLink?: string
}

export interface MirrorUsagePoint {
  href?: string
  mrid?: string
  deviceLfdi?: string
  postRate?: number
}

export interface Notification {
  subscribedResource?: string
  status?: number
  resourceType?: string
  resource?: XmlNode
}

// ── decoders ───────────────────────────────────────────────────────────────────────────────────

export function decodeList<T>(node: XmlNode, item: string, decode: (node: XmlNode) => T): ListPage<T> {
  const items = children(node, item).map(decode)
  const href = attribute(node, 'href')
  const pollRate = integerAttribute(node, 'pollRate')
  return {
    ...(href ? { href } : {}),
    all: integerAttribute(node, 'all') ?? items.length,
    results: integerAttribute(node, 'results') ?? items.length,
    ...(pollRate !== undefined ? { pollRate } : {}),
    items,
  }
}

const defined = <T extends Record<string, unknown>>(value: T): T =>
  Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T

export function decodeDeviceCapability(node: XmlNode): DeviceCapability {
  return defined({
    href: attribute(node, 'href'),
    pollRate: integerAttribute(node, 'pollRate'),
    timeLink: link(node, 'TimeLink'),
    endDeviceListLink: link(node, 'EndDeviceListLink'),
    mirrorUsagePointListLink: link(node, 'MirrorUsagePointListLink'),
    selfDeviceLink: link(node, 'SelfDeviceLink'),
  })
}

export function decodeTime(node: XmlNode): ServerTime | undefined {
  const currentTime = integer(node, 'currentTime')
  if (currentTime === undefined) return undefined
  return defined({ currentTime, quality: integer(node, 'quality') })
}

export function decodeEndDevice(node: XmlNode): EndDevice {
  const sfdi = text(node, 'sFDI')
  return defined({
    href: attribute(node, 'href'),
    lfdi: text(node, 'lFDI')?.toUpperCase(),
    sfdi: sfdi && /^\d+$/.test(sfdi) ? Number(sfdi) : undefined,
    enabled: boolean(node, 'enabled'),
    changedTime: integer(node, 'changedTime'),
    postRate: integer(node, 'postRate'),
    derListLink: link(node, 'DERListLink'),
    fsaListLink: link(node, 'FunctionSetAssignmentsListLink'),
    registrationLink: link(node, 'RegistrationLink'),
    subscriptionListLink: link(node, 'SubscriptionListLink'),
    connectionPointLink: link(node, 'ConnectionPointLink'),
  })
}

export function decodeRegistration(node: XmlNode): Registration {
  return defined({ pin: integer(node, 'pIN'), pollRate: integerAttribute(node, 'pollRate') })
}

export function decodeFunctionSetAssignments(node: XmlNode): FunctionSetAssignments {
  return defined({
    href: attribute(node, 'href'),
    mrid: text(node, 'mRID'),
    derProgramListLink: link(node, 'DERProgramListLink'),
  })
}

export function decodeDerProgram(node: XmlNode): DerProgram {
  return defined({
    href: attribute(node, 'href'),
    mrid: text(node, 'mRID'),
    primacy: integer(node, 'primacy') ?? 255,
    defaultControlLink: link(node, 'DefaultDERControlLink'),
    controlListLink: link(node, 'DERControlListLink'),
  })
}

export function decodeControlBase(node: XmlNode | undefined): DerControlBase {
  return defined({
    opModExpLimW: readActivePower(child(node, 'opModExpLimW')),
    opModImpLimW: readActivePower(child(node, 'opModImpLimW')),
    opModGenLimW: readActivePower(child(node, 'opModGenLimW')),
    opModLoadLimW: readActivePower(child(node, 'opModLoadLimW')),
    opModConnect: boolean(node, 'opModConnect'),
    opModEnergize: boolean(node, 'opModEnergize'),
  })
}

/** A DERControl, or undefined when it lacks what scheduling needs (mRID, interval). */
export function decodeDerControl(node: XmlNode): DerControl | undefined {
  const mrid = text(node, 'mRID')
  const interval = child(node, 'interval')
  const start = integer(interval, 'start')
  const duration = integer(interval, 'duration')
  if (!mrid || start === undefined || duration === undefined || duration < 0) return undefined
  const status = child(node, 'EventStatus')
  const responseRequired = attribute(node, 'responseRequired')
  return defined({
    href: attribute(node, 'href'),
    mrid: mrid.toUpperCase(),
    creationTime: integer(node, 'creationTime') ?? 0,
    currentStatus: integer(status, 'currentStatus') ?? EVENT_STATUS.scheduled,
    potentiallySuperseded: boolean(status, 'potentiallySuperseded') ?? false,
    start,
    duration,
    randomizeStart: integer(node, 'randomizeStart') ?? 0,
    randomizeDuration: integer(node, 'randomizeDuration') ?? 0,
    replyTo: attribute(node, 'replyTo'),
    // Absent means none required by 2030.5; CSIP-AUS servers send "03"/"00": read as hex.
    responseRequired:
      responseRequired && /^[0-9A-Fa-f]{1,2}$/.test(responseRequired)
        ? Number.parseInt(responseRequired, 16)
        : 0,
    base: decodeControlBase(child(node, 'DERControlBase')),
  })
}

export function decodeDefaultDerControl(node: XmlNode): DefaultDerControl {
  return defined({
    href: attribute(node, 'href'),
    mrid: text(node, 'mRID'),
    base: decodeControlBase(child(node, 'DERControlBase')),
    setGradW: integer(node, 'setGradW'),
  })
}

export function decodeDer(node: XmlNode): Der {
  return defined({
    href: attribute(node, 'href'),
    capabilityLink: link(node, 'DERCapabilityLink'),
    settingsLink: link(node, 'DERSettingsLink'),
    statusLink: link(node, 'DERStatusLink'),
    availabilityLink: link(node, 'DERAvailabilityLink'),
  })
}

export function decodeMirrorUsagePoint(node: XmlNode): MirrorUsagePoint {
  return defined({
    href: attribute(node, 'href'),
    mrid: text(node, 'mRID')?.toUpperCase(),
    deviceLfdi: text(node, 'deviceLFDI')?.toUpperCase(),
    postRate: integer(node, 'postRate'),
  })
}

export function decodeNotification(node: XmlNode): Notification {
  const resource = child(node, 'Resource')
  return defined({
    subscribedResource: text(node, 'subscribedResource'),
    status: integer(node, 'status'),
    resourceType: attribute(resource, 'type')?.replace(/^.*:/, ''),
    resource,
  })
}

// ── encoders ───────────────────────────────────────────────────────────────────────────────────

/** CSIP-AUS DOEControlType bits: 0 export, 1 import, 2 generation, 3 load limit. */
export const DOE_MODES = { opModExpLimW: 1, opModImpLimW: 2, opModGenLimW: 4, opModLoadLimW: 8 } as const
/** 2030.5 DERControlType bits the client supports: 0 opModConnect, 1 opModEnergize. */
export const DER_CONTROL_MODES = { opModConnect: 1, opModEnergize: 2 } as const

export function encodeEndDevice(
  device: { lfdi: string; sfdi: number; changedTime: number; deviceCategory?: number },
  version: CsipVersion,
): string {
  return writeXml(
    'EndDevice',
    [
      [
        'deviceCategory',
        device.deviceCategory === undefined ? undefined : hexBinary(device.deviceCategory, 8),
      ],
      ['lFDI', device.lfdi],
      ['sFDI', device.sfdi],
      ['changedTime', device.changedTime],
    ],
    version,
  )
}

export function encodeConnectionPoint(nmi: string, version: CsipVersion): string {
  return writeXml('csipaus:ConnectionPoint', [['csipaus:connectionPointId', nmi]], version)
}

export interface CapabilityInit {
  ratedW: number
  /** DERType: 0 n/a, 4 PV, 80 storage, 83 PV + storage (2030.5 Table 24). */
  type: number
  maxChargeW?: number
  maxDischargeW?: number
  maxWh?: number
}

export function encodeDerCapability(capability: CapabilityInit, version: CsipVersion): string {
  return writeXml(
    'DERCapability',
    [
      ['modesSupported', hexBinary(DER_CONTROL_MODES.opModConnect | DER_CONTROL_MODES.opModEnergize, 8)],
      [
        'rtgMaxChargeRateW',
        capability.maxChargeW === undefined ? undefined : activePower(capability.maxChargeW),
      ],
      [
        'rtgMaxDischargeRateW',
        capability.maxDischargeW === undefined ? undefined : activePower(capability.maxDischargeW),
      ],
      ['rtgMaxW', activePower(capability.ratedW)],
      ['rtgMaxWh', capability.maxWh === undefined ? undefined : wattHours(capability.maxWh)],
      ['type', capability.type],
      ['csipaus:doeModesSupported', hexBinary(15, 2)],
    ],
    version,
  )
}

export function encodeDerSettings(
  settings: { maxW: number; gradW?: number; updatedTime: number },
  version: CsipVersion,
): string {
  return writeXml(
    'DERSettings',
    [
      ['modesEnabled', hexBinary(DER_CONTROL_MODES.opModConnect | DER_CONTROL_MODES.opModEnergize, 8)],
      ['setGradW', settings.gradW ?? 0],
      ['setMaxW', activePower(settings.maxW)],
      ['updatedTime', settings.updatedTime],
      ['csipaus:doeModesEnabled', hexBinary(15, 2)],
    ],
    version,
  )
}

/**
 * DERStatus. genConnectStatus (ConnectStatusType) bits: 0 connected, 1 available, 2 operating;
 * operationalModeStatus 2 = operational, 1 = off.
 */
export function encodeDerStatus(
  status: { readingTime: number; connected: boolean; operating: boolean; socPercent?: number },
  version: CsipVersion,
): string {
  const t = status.readingTime
  const connect = status.connected ? 0b011 | (status.operating ? 0b100 : 0) : 0b010
  return writeXml(
    'DERStatus',
    [
      [
        'genConnectStatus',
        [
          ['dateTime', t],
          ['value', hexBinary(connect, 2)],
        ],
      ],
      [
        'operationalModeStatus',
        [
          ['dateTime', t],
          ['value', status.operating ? 2 : 1],
        ],
      ],
      ['readingTime', t],
      [
        'stateOfChargeStatus',
        status.socPercent === undefined
          ? undefined
          : [
              ['dateTime', t],
              ['value', Math.round(Math.max(0, Math.min(100, status.socPercent)) * 100)],
            ],
      ],
    ],
    version,
  )
}

export function encodeDerAvailability(
  availability: { readingTime: number; availableW: number },
  version: CsipVersion,
): string {
  return writeXml(
    'DERAvailability',
    [
      ['readingTime', availability.readingTime],
      ['statWAvail', activePower(Math.max(0, availability.availableW))],
    ],
    version,
  )
}

function wattHours(wh: number): Content {
  let multiplier = 0
  let value = Math.round(wh)
  while (Math.abs(value) > 281_474_976_710_655 && multiplier < 9) {
    multiplier += 1
    value = Math.round(wh / 10 ** multiplier)
  }
  return [
    ['multiplier', multiplier],
    ['value', value],
  ]
}

/** Response status (2030.5 ResponseType) the client posts. */
export const RESPONSE_STATUS = {
  received: 1,
  started: 2,
  completed: 3,
  cancelled: 6,
  superseded: 7,
  /** "Rejected – invalid event": the event cannot be met by this device. */
  cannotBeMet: 252,
  /** "Rejected – event was received after it had expired". */
  expired: 253,
} as const

export function encodeDerControlResponse(
  response: { lfdi: string; subject: string; status: number; createdDateTime: number },
  version: CsipVersion,
): string {
  return writeXml(
    'DERControlResponse',
    [
      ['createdDateTime', response.createdDateTime],
      ['endDeviceLFDI', response.lfdi],
      ['status', response.status],
      ['subject', response.subject],
    ],
    version,
  )
}

/** One reading stream of a MirrorUsagePoint: what it measures and how it is scaled. */
export interface MirrorReadingType {
  /** mRID of the MirrorMeterReading (32 hex digits). */
  mrid: string
  description: string
  /** UomType: 38 W, 63 var, 29 V, 33 Hz. */
  uom: number
  /** PhaseCode: 0 n/a, 129 A-N, 65 B-N, 33 C-N. */
  phase: number
  powerOfTenMultiplier: number
}

export function readingTypeContent(type: MirrorReadingType): Content {
  return [
    ['accumulationBehaviour', 12],
    ['commodity', 1],
    ['dataQualifier', 2],
    ['flowDirection', 1],
    ['intervalLength', 0],
    ['kind', 37],
    ['phase', type.phase],
    ['powerOfTenMultiplier', type.powerOfTenMultiplier],
    ['uom', type.uom],
  ]
}

export function encodeMirrorUsagePoint(
  point: {
    mrid: string
    description: string
    lfdi: string
    roleFlags: number
    readings: MirrorReadingType[]
  },
  version: CsipVersion,
): string {
  return writeXml(
    'MirrorUsagePoint',
    [
      ['mRID', point.mrid],
      ['description', point.description],
      ['roleFlags', hexBinary(point.roleFlags, 4)],
      ['serviceCategoryKind', 0],
      ['status', 1],
      ['deviceLFDI', point.lfdi],
      ...point.readings.map((reading): Content[number] => [
        'MirrorMeterReading',
        [
          ['mRID', reading.mrid],
          ['description', reading.description],
          ['ReadingType', readingTypeContent(reading)],
        ],
      ]),
    ],
    version,
  )
}

/** Readings for one post: per MirrorMeterReading, one Reading over [start, start + duration). */
export function encodeMirrorMeterReadingList(
  readings: { type: MirrorReadingType; value: number; start: number; duration: number }[],
  version: CsipVersion,
): string {
  return writeXml(
    'MirrorMeterReadingList',
    readings.map(({ type, value, start, duration }): Content[number] => [
      'MirrorMeterReading',
      [
        ['mRID', type.mrid],
        ['description', type.description],
        [
          'Reading',
          [
            ['qualityFlags', hexBinary(0, 4)],
            [
              'timePeriod',
              [
                ['duration', duration],
                ['start', start],
              ],
            ],
            ['value', Math.round(value / 10 ** type.powerOfTenMultiplier)],
          ],
        ],
      ],
    ]),
    version,
    { all: readings.length, results: readings.length },
  )
}

export function encodeSubscription(
  subscription: { resource: string; notificationUri: string; limit: number },
  version: CsipVersion,
): string {
  return writeXml(
    'Subscription',
    [
      ['subscribedResource', subscription.resource],
      ['encoding', 0],
      ['level', '-S1'],
      ['limit', subscription.limit],
      ['notificationURI', subscription.notificationUri],
    ],
    version,
  )
}

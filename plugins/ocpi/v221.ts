/**
 * The OCPI 2.2.1 codec: zod schemas of every object the plugin sends or receives, in two modes.
 *
 * - `strict` (what we send, and what tests check our output against): the specification's
 *   cardinalities, lengths, enums and DateTime form; objects refuse unknown fields, so a field
 *   we mistype fails before it leaves.
 * - `lenient` (what we accept): unknown fields are ignored; a number where the specification
 *   has a string is taken as its text (the specification's own example pushes
 *   `"physical_reference": 3`); lengths are bounded generously rather than exactly; DateTimes
 *   in any RFC 3339 form (with or without `Z`, fractional seconds, offsets) are normalised to
 *   UTC `YYYY-MM-DDTHH:MM:SS[.mmm]Z`; descriptive enums (facilities, capabilities, image
 *   categories, …) accept values from newer versions. Fields the node acts on (statuses, token
 *   whitelists, dimension types, ids) stay exact. `last_updated` may be missing on a PUT (the
 *   receiver stamps it), never on a PATCH (OCPI status 2001); connector electrical data may be
 *   missing on a pushed connector, as in the specification's "add an EVSE" example.
 *
 * `ocpi221.strict.location` and `ocpi221.lenient.location` etc. are the two sides; `patch`
 * schemas are the partial objects a PATCH carries (always with `last_updated`).
 */
import * as z from 'zod'

export const OCPI_VERSION = '2.2.1'

export const MODULE_IDS = [
  'cdrs',
  'chargingprofiles',
  'commands',
  'credentials',
  'hubclientinfo',
  'locations',
  'sessions',
  'tariffs',
  'tokens',
] as const
export type ModuleId = (typeof MODULE_IDS)[number]

export const ROLES = ['CPO', 'EMSP', 'HUB', 'NAP', 'NSP', 'OTHER', 'SCSP'] as const
export type Role = (typeof ROLES)[number]

export const EVSE_STATUSES = [
  'AVAILABLE',
  'BLOCKED',
  'CHARGING',
  'INOPERATIVE',
  'OUTOFORDER',
  'PLANNED',
  'REMOVED',
  'RESERVED',
  'UNKNOWN',
] as const
export type EvseStatus = (typeof EVSE_STATUSES)[number]

export const TOKEN_TYPES = ['AD_HOC_USER', 'APP_USER', 'OTHER', 'RFID'] as const
export const WHITELIST_TYPES = ['ALWAYS', 'ALLOWED', 'ALLOWED_OFFLINE', 'NEVER'] as const
export const ALLOWED_TYPES = ['ALLOWED', 'BLOCKED', 'EXPIRED', 'NO_CREDIT', 'NOT_ALLOWED'] as const
export const SESSION_STATUSES = ['ACTIVE', 'COMPLETED', 'INVALID', 'PENDING', 'RESERVATION'] as const
export const AUTH_METHODS = ['AUTH_REQUEST', 'COMMAND', 'WHITELIST'] as const
export const COMMAND_TYPES = [
  'CANCEL_RESERVATION',
  'RESERVE_NOW',
  'START_SESSION',
  'STOP_SESSION',
  'UNLOCK_CONNECTOR',
] as const
export type CommandType = (typeof COMMAND_TYPES)[number]
export const COMMAND_RESPONSE_TYPES = ['NOT_SUPPORTED', 'REJECTED', 'ACCEPTED', 'UNKNOWN_SESSION'] as const
export const COMMAND_RESULT_TYPES = [
  'ACCEPTED',
  'CANCELED_RESERVATION',
  'EVSE_OCCUPIED',
  'EVSE_INOPERATIVE',
  'FAILED',
  'NOT_SUPPORTED',
  'REJECTED',
  'TIMEOUT',
  'UNKNOWN_RESERVATION',
] as const
export type CommandResultType = (typeof COMMAND_RESULT_TYPES)[number]
export const CHARGING_PROFILE_RESPONSE_TYPES = [
  'ACCEPTED',
  'NOT_SUPPORTED',
  'REJECTED',
  'TOO_OFTEN',
  'UNKNOWN_SESSION',
] as const
export const CHARGING_PROFILE_RESULT_TYPES = ['ACCEPTED', 'REJECTED', 'UNKNOWN'] as const
export type ChargingProfileResultType = (typeof CHARGING_PROFILE_RESULT_TYPES)[number]

const CONNECTOR_TYPES = [
  'CHADEMO',
  'CHAOJI',
  'DOMESTIC_A',
  'DOMESTIC_B',
  'DOMESTIC_C',
  'DOMESTIC_D',
  'DOMESTIC_E',
  'DOMESTIC_F',
  'DOMESTIC_G',
  'DOMESTIC_H',
  'DOMESTIC_I',
  'DOMESTIC_J',
  'DOMESTIC_K',
  'DOMESTIC_L',
  'DOMESTIC_M',
  'DOMESTIC_N',
  'DOMESTIC_O',
  'GBT_AC',
  'GBT_DC',
  'IEC_60309_2_single_16',
  'IEC_60309_2_three_16',
  'IEC_60309_2_three_32',
  'IEC_60309_2_three_64',
  'IEC_62196_T1',
  'IEC_62196_T1_COMBO',
  'IEC_62196_T2',
  'IEC_62196_T2_COMBO',
  'IEC_62196_T3A',
  'IEC_62196_T3C',
  'NEMA_5_20',
  'NEMA_6_30',
  'NEMA_6_50',
  'NEMA_10_30',
  'NEMA_10_50',
  'NEMA_14_30',
  'NEMA_14_50',
  'PANTOGRAPH_BOTTOM_UP',
  'PANTOGRAPH_TOP_DOWN',
  'TESLA_R',
  'TESLA_S',
] as const
export const CONNECTOR_FORMATS = ['SOCKET', 'CABLE'] as const
export const POWER_TYPES = ['AC_1_PHASE', 'AC_2_PHASE', 'AC_2_PHASE_SPLIT', 'AC_3_PHASE', 'DC'] as const
export type PowerType = (typeof POWER_TYPES)[number]
export { CONNECTOR_TYPES }

const CAPABILITIES = [
  'CHARGING_PROFILE_CAPABLE',
  'CHARGING_PREFERENCES_CAPABLE',
  'CHIP_CARD_SUPPORT',
  'CONTACTLESS_CARD_SUPPORT',
  'CREDIT_CARD_PAYABLE',
  'DEBIT_CARD_PAYABLE',
  'PED_TERMINAL',
  'REMOTE_START_STOP_CAPABLE',
  'RESERVABLE',
  'RFID_READER',
  'START_SESSION_CONNECTOR_REQUIRED',
  'TOKEN_GROUP_CAPABLE',
  'UNLOCK_CAPABLE',
] as const
const FACILITIES = [
  'HOTEL',
  'RESTAURANT',
  'CAFE',
  'MALL',
  'SUPERMARKET',
  'SPORT',
  'RECREATION_AREA',
  'NATURE',
  'MUSEUM',
  'BIKE_SHARING',
  'BUS_STOP',
  'TAXI_STAND',
  'TRAM_STOP',
  'METRO_STATION',
  'TRAIN_STATION',
  'AIRPORT',
  'PARKING_LOT',
  'CARPOOL_PARKING',
  'FUEL_STATION',
  'WIFI',
] as const
const PARKING_TYPES = [
  'ALONG_MOTORWAY',
  'PARKING_GARAGE',
  'PARKING_LOT',
  'ON_DRIVEWAY',
  'ON_STREET',
  'UNDERGROUND_GARAGE',
] as const
const PARKING_RESTRICTIONS = ['EV_ONLY', 'PLUGGED', 'DISABLED', 'CUSTOMERS', 'MOTORCYCLES'] as const
const IMAGE_CATEGORIES = ['CHARGER', 'ENTRANCE', 'LOCATION', 'NETWORK', 'OPERATOR', 'OTHER', 'OWNER'] as const
const ENERGY_SOURCES = [
  'NUCLEAR',
  'GENERAL_FOSSIL',
  'COAL',
  'GAS',
  'GENERAL_GREEN',
  'SOLAR',
  'WIND',
  'WATER',
] as const
const ENVIRONMENTAL_IMPACTS = ['NUCLEAR_WASTE', 'CARBON_DIOXIDE'] as const
const PROFILE_TYPES = ['CHEAP', 'FAST', 'GREEN', 'REGULAR'] as const
const TARIFF_TYPES = ['AD_HOC_PAYMENT', 'PROFILE_CHEAP', 'PROFILE_FAST', 'PROFILE_GREEN', 'REGULAR'] as const
export const TARIFF_DIMENSION_TYPES = ['ENERGY', 'FLAT', 'PARKING_TIME', 'TIME'] as const
const DAYS_OF_WEEK = ['MONDAY', 'TUESDAY', 'WEDNESDAY', 'THURSDAY', 'FRIDAY', 'SATURDAY', 'SUNDAY'] as const
const RESERVATION_RESTRICTIONS = ['RESERVATION', 'RESERVATION_EXPIRES'] as const
export const CDR_DIMENSION_TYPES = [
  'CURRENT',
  'ENERGY',
  'ENERGY_EXPORT',
  'ENERGY_IMPORT',
  'MAX_CURRENT',
  'MIN_CURRENT',
  'MAX_POWER',
  'MIN_POWER',
  'PARKING_TIME',
  'POWER',
  'RESERVATION_TIME',
  'STATE_OF_CHARGE',
  'TIME',
] as const
const INTERFACE_ROLES = ['SENDER', 'RECEIVER'] as const
export type InterfaceRole = (typeof INTERFACE_ROLES)[number]
const VERSION_NUMBERS = ['2.0', '2.1', '2.1.1', '2.2', '2.2.1'] as const

/** OCPI DateTime as we write it: UTC, `Z`, milliseconds only when there are some. */
export function formatDateTime(ms: number): string {
  const iso = new Date(ms).toISOString()
  return iso.endsWith('.000Z') ? `${iso.slice(0, 19)}Z` : iso
}

/** The forms OCPI allows: `2015-06-29T20:39:09Z`, without `Z`, with fractional seconds. */
const STRICT_DATETIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z?$/
const LENIENT_DATETIME = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?$/i

/** Parse any RFC 3339 DateTime OCPI parties send; no zone means UTC. Undefined if not one. */
export function parseDateTime(text: string): number | undefined {
  const value = text.trim()
  if (!LENIENT_DATETIME.test(value)) return undefined
  const zoned = /(?:Z|[+-]\d{2}:?\d{2})$/i.test(value) ? value : `${value}Z`
  const ms = Date.parse(zoned.replace(' ', 'T'))
  return Number.isFinite(ms) ? ms : undefined
}

/** Printable ASCII (CiString) and printable UTF-8 without control characters (string). */
const PRINTABLE_ASCII = /^[\x20-\x7e]*$/
// biome-ignore lint/suspicious/noControlCharactersInRegex: the point is to refuse them.
const NO_CONTROL = /^[^\x00-\x1f\x7f]*$/

type Mode = 'strict' | 'lenient'

/** Build every schema for one mode. */
function build<M extends Mode>(mode: M) {
  const strict = mode === 'strict'
  /** The strict schema when strict, the lenient one otherwise (and typed as such). */
  const choose = <S extends z.ZodType, L extends z.ZodType>(strictSchema: S, lenientSchema: L) =>
    (strict ? strictSchema : lenientSchema) as M extends 'strict' ? S : L
  /** Text: a number is taken as its decimal text when lenient. */
  const text = (schema: z.ZodString) =>
    strict ? schema : z.preprocess((value) => (typeof value === 'number' ? String(value) : value), schema)
  const bound = (max: number) => (strict ? max : Math.max(255, max * 4))
  const ci = (max: number) =>
    text(z.string().max(bound(max)).regex(PRINTABLE_ASCII, 'only printable ASCII is allowed'))
  const str = (max: number) =>
    text(z.string().max(bound(max)).regex(NO_CONTROL, 'control characters are not allowed'))
  const url = () => (strict ? z.url().max(255) : z.string().min(1).max(2048))
  const int = (min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER) => {
    const schema = z.number().int().min(min).max(max)
    return strict
      ? schema
      : z.preprocess(
          (value) => (typeof value === 'string' && /^-?\d+$/.test(value.trim()) ? Number(value) : value),
          schema,
        )
  }
  const number = () =>
    strict
      ? z.number()
      : z.preprocess(
          (value) =>
            typeof value === 'string' && /^-?\d+(?:\.\d+)?$/.test(value.trim()) ? Number(value) : value,
          z.number(),
        )
  const dateTime = () =>
    strict
      ? z.string().regex(STRICT_DATETIME, 'must be an OCPI DateTime (2015-06-29T20:39:09Z)')
      : z.string().transform((value, context) => {
          const ms = parseDateTime(value)
          if (ms === undefined) {
            context.addIssue({ code: 'custom', message: `'${value.slice(0, 40)}' is not a DateTime` })
            return z.NEVER
          }
          return formatDateTime(ms)
        })
  /** An enum the node acts on: exact both ways. */
  const exact = <const T extends readonly [string, ...string[]]>(values: T) => z.enum(values)
  /** A descriptive enum: newer values are kept when lenient. */
  const open = <const T extends readonly [string, ...string[]]>(values: T) =>
    strict ? z.enum(values) : z.string().max(64)
  const object = <T extends z.ZodRawShape>(shape: T) => (strict ? z.strictObject(shape) : z.object(shape))
  const list = <T extends z.ZodType>(item: T) => z.array(item).max(strict ? 100_000 : 100_000)

  const displayText = object({ language: str(2), text: str(512) })
  const price = object({ excl_vat: number(), incl_vat: number().optional() })
  const geoLocation = object({
    latitude: text(z.string().regex(/^-?[0-9]{1,2}\.[0-9]{5,7}$/, 'latitude like 51.047599')),
    longitude: text(z.string().regex(/^-?[0-9]{1,3}\.[0-9]{5,7}$/, 'longitude like 3.729944')),
  })
  const image = object({
    url: url(),
    thumbnail: url().optional(),
    category: open(IMAGE_CATEGORIES),
    type: ci(4),
    width: int().optional(),
    height: int().optional(),
  })
  const businessDetails = object({ name: str(100), website: url().optional(), logo: image.optional() })
  const additionalGeoLocation = object({
    latitude: geoLocation.shape.latitude,
    longitude: geoLocation.shape.longitude,
    name: displayText.optional(),
  })
  const regularHours = object({
    weekday: int(1, 7),
    period_begin: text(z.string().regex(/^([0-1][0-9]|2[0-3]):[0-5][0-9]$/)),
    period_end: text(z.string().regex(/^([0-1][0-9]|2[0-4]):[0-5][0-9]$/)),
  })
  const exceptionalPeriod = object({ period_begin: dateTime(), period_end: dateTime() })
  const hours = object({
    twentyfourseven: z.boolean(),
    regular_hours: list(regularHours).optional(),
    exceptional_openings: list(exceptionalPeriod).optional(),
    exceptional_closings: list(exceptionalPeriod).optional(),
  })
  const energySource = object({ source: open(ENERGY_SOURCES), percentage: number() })
  const environmentalImpact = object({ category: open(ENVIRONMENTAL_IMPACTS), amount: number() })
  const energyMix = object({
    is_green_energy: z.boolean(),
    energy_sources: list(energySource).optional(),
    environ_impact: list(environmentalImpact).optional(),
    supplier_name: str(64).optional(),
    energy_product_name: str(64).optional(),
  })
  const publishTokenType = object({
    uid: ci(36).optional(),
    type: exact(TOKEN_TYPES).optional(),
    visual_number: str(64).optional(),
    issuer: str(64).optional(),
    group_id: ci(36).optional(),
  })
  const statusSchedule = object({
    period_begin: dateTime(),
    period_end: dateTime().optional(),
    status: exact(EVSE_STATUSES),
  })
  const connector = object({
    id: ci(36),
    standard: open(CONNECTOR_TYPES),
    format: open(CONNECTOR_FORMATS),
    power_type: choose(exact(POWER_TYPES), exact(POWER_TYPES).optional()),
    max_voltage: choose(int(), int().optional()),
    max_amperage: choose(int(), int().optional()),
    max_electric_power: int().optional(),
    tariff_ids: list(ci(36)).optional(),
    terms_and_conditions: url().optional(),
    last_updated: choose(dateTime(), dateTime().optional()),
  })
  const evse = object({
    uid: ci(36),
    evse_id: ci(48).optional(),
    status: exact(EVSE_STATUSES),
    status_schedule: list(statusSchedule).optional(),
    capabilities: list(open(CAPABILITIES)).optional(),
    connectors: list(connector).min(1),
    floor_level: str(4).optional(),
    coordinates: geoLocation.optional(),
    physical_reference: str(16).optional(),
    directions: list(displayText).optional(),
    parking_restrictions: list(open(PARKING_RESTRICTIONS)).optional(),
    images: list(image).optional(),
    last_updated: choose(dateTime(), dateTime().optional()),
  })
  const location = object({
    country_code: ci(2),
    party_id: ci(3),
    id: ci(36),
    publish: z.boolean(),
    publish_allowed_to: list(publishTokenType).optional(),
    name: str(255).optional(),
    address: str(255),
    city: str(45),
    postal_code: str(10).optional(),
    state: str(45).optional(),
    country: str(3),
    coordinates: geoLocation,
    related_locations: list(additionalGeoLocation).optional(),
    parking_type: open(PARKING_TYPES).optional(),
    evses: list(evse).optional(),
    directions: list(displayText).optional(),
    operator: businessDetails.optional(),
    suboperator: businessDetails.optional(),
    owner: businessDetails.optional(),
    facilities: list(open(FACILITIES)).optional(),
    time_zone: str(255),
    opening_times: hours.optional(),
    charging_when_closed: z.boolean().optional(),
    images: list(image).optional(),
    energy_mix: energyMix.optional(),
    last_updated: choose(dateTime(), dateTime().optional()),
  })

  const cdrToken = object({
    country_code: ci(2),
    party_id: ci(3),
    uid: ci(36),
    type: exact(TOKEN_TYPES),
    contract_id: ci(36),
  })
  const cdrDimension = object({ type: exact(CDR_DIMENSION_TYPES), volume: number() })
  const chargingPeriod = object({
    start_date_time: dateTime(),
    dimensions: list(cdrDimension).min(1),
    tariff_id: ci(36).optional(),
  })
  const session = object({
    country_code: ci(2),
    party_id: ci(3),
    id: ci(36),
    start_date_time: dateTime(),
    end_date_time: dateTime().optional(),
    kwh: number(),
    cdr_token: cdrToken,
    auth_method: exact(AUTH_METHODS),
    authorization_reference: ci(36).optional(),
    location_id: ci(36),
    evse_uid: ci(36),
    connector_id: ci(36),
    meter_id: str(255).optional(),
    currency: str(3),
    charging_periods: list(chargingPeriod).optional(),
    total_cost: price.optional(),
    status: exact(SESSION_STATUSES),
    last_updated: choose(dateTime(), dateTime().optional()),
  })

  const tariffRestrictions = object({
    start_time: str(5).optional(),
    end_time: str(5).optional(),
    start_date: str(10).optional(),
    end_date: str(10).optional(),
    min_kwh: number().optional(),
    max_kwh: number().optional(),
    min_current: number().optional(),
    max_current: number().optional(),
    min_power: number().optional(),
    max_power: number().optional(),
    min_duration: int().optional(),
    max_duration: int().optional(),
    day_of_week: list(open(DAYS_OF_WEEK)).optional(),
    reservation: open(RESERVATION_RESTRICTIONS).optional(),
  })
  const priceComponent = object({
    type: exact(TARIFF_DIMENSION_TYPES),
    price: number(),
    vat: number().optional(),
    step_size: int(),
  })
  const tariffElement = object({
    price_components: list(priceComponent).min(1),
    restrictions: tariffRestrictions.optional(),
  })
  const tariff = object({
    country_code: ci(2),
    party_id: ci(3),
    id: ci(36),
    currency: str(3),
    type: open(TARIFF_TYPES).optional(),
    tariff_alt_text: list(displayText).optional(),
    tariff_alt_url: url().optional(),
    min_price: price.optional(),
    max_price: price.optional(),
    elements: list(tariffElement).min(1),
    start_date_time: dateTime().optional(),
    end_date_time: dateTime().optional(),
    energy_mix: energyMix.optional(),
    last_updated: choose(dateTime(), dateTime().optional()),
  })

  const cdrLocation = object({
    id: ci(36),
    name: str(255).optional(),
    address: str(45),
    city: str(45),
    postal_code: str(10).optional(),
    state: str(20).optional(),
    country: str(3),
    coordinates: geoLocation,
    evse_uid: ci(36),
    evse_id: ci(48),
    connector_id: ci(36),
    connector_standard: open(CONNECTOR_TYPES),
    connector_format: open(CONNECTOR_FORMATS),
    connector_power_type: exact(POWER_TYPES),
  })
  const signedValue = object({ nature: ci(32), plain_data: str(5000), signed_data: str(5000) })
  const signedData = object({
    encoding_method: ci(36),
    encoding_method_version: int().optional(),
    public_key: str(512).optional(),
    signed_values: list(signedValue).min(1),
    url: str(512).optional(),
  })
  const cdr = object({
    country_code: ci(2),
    party_id: ci(3),
    id: ci(39),
    start_date_time: dateTime(),
    end_date_time: dateTime(),
    session_id: ci(36).optional(),
    cdr_token: cdrToken,
    auth_method: exact(AUTH_METHODS),
    authorization_reference: ci(36).optional(),
    cdr_location: cdrLocation,
    meter_id: str(255).optional(),
    currency: str(3),
    tariffs: list(tariff).optional(),
    charging_periods: list(chargingPeriod).min(1),
    signed_data: signedData.optional(),
    total_cost: price,
    total_fixed_cost: price.optional(),
    total_energy: number(),
    total_energy_cost: price.optional(),
    total_time: number(),
    total_time_cost: price.optional(),
    total_parking_time: number().optional(),
    total_parking_cost: price.optional(),
    total_reservation_cost: price.optional(),
    remark: str(255).optional(),
    invoice_reference_id: ci(39).optional(),
    credit: z.boolean().optional(),
    credit_reference_id: ci(39).optional(),
    home_charging_compensation: z.boolean().optional(),
    last_updated: choose(dateTime(), dateTime().optional()),
  })

  const energyContract = object({ supplier_name: str(64), contract_id: str(64).optional() })
  const token = object({
    country_code: ci(2),
    party_id: ci(3),
    uid: ci(36),
    type: exact(TOKEN_TYPES),
    contract_id: ci(36),
    visual_number: str(64).optional(),
    issuer: str(64),
    group_id: ci(36).optional(),
    valid: z.boolean(),
    whitelist: exact(WHITELIST_TYPES),
    language: str(2).optional(),
    default_profile_type: open(PROFILE_TYPES).optional(),
    energy_contract: energyContract.optional(),
    last_updated: choose(dateTime(), dateTime().optional()),
  })
  const locationReferences = object({ location_id: ci(36), evse_uids: list(ci(36)).optional() })
  const authorizationInfo = object({
    allowed: exact(ALLOWED_TYPES),
    token,
    location: locationReferences.optional(),
    authorization_reference: ci(36).optional(),
    info: displayText.optional(),
  })

  const startSession = object({
    response_url: url(),
    token,
    location_id: ci(36),
    evse_uid: ci(36).optional(),
    connector_id: ci(36).optional(),
    authorization_reference: ci(36).optional(),
  })
  const stopSession = object({ response_url: url(), session_id: ci(36) })
  const unlockConnector = object({
    response_url: url(),
    location_id: ci(36),
    evse_uid: ci(36),
    connector_id: ci(36),
  })
  const reserveNow = object({
    response_url: url(),
    token,
    expiry_date: dateTime(),
    reservation_id: ci(36),
    location_id: ci(36),
    evse_uid: ci(36).optional(),
    authorization_reference: ci(36).optional(),
  })
  const cancelReservation = object({ response_url: url(), reservation_id: ci(36) })
  const commandResponse = object({
    result: exact(COMMAND_RESPONSE_TYPES),
    timeout: int(),
    message: list(displayText).optional(),
  })
  const commandResult = object({ result: exact(COMMAND_RESULT_TYPES), message: list(displayText).optional() })

  const chargingProfilePeriod = object({ start_period: int(), limit: number() })
  const chargingProfile = object({
    start_date_time: dateTime().optional(),
    duration: int().optional(),
    charging_rate_unit: exact(['W', 'A'] as const),
    min_charging_rate: number().optional(),
    charging_profile_period: list(chargingProfilePeriod).optional(),
  })
  const setChargingProfile = object({ charging_profile: chargingProfile, response_url: url() })
  const chargingProfileResponse = object({
    result: exact(CHARGING_PROFILE_RESPONSE_TYPES),
    timeout: int(),
  })
  const activeChargingProfile = object({ start_date_time: dateTime(), charging_profile: chargingProfile })
  const activeChargingProfileResult = object({
    result: exact(CHARGING_PROFILE_RESULT_TYPES),
    profile: activeChargingProfile.optional(),
  })
  const chargingProfileResult = object({ result: exact(CHARGING_PROFILE_RESULT_TYPES) })
  const clearProfileResult = object({ result: exact(CHARGING_PROFILE_RESULT_TYPES) })

  const credentialsRole = object({
    role: exact(ROLES),
    business_details: businessDetails,
    party_id: ci(3),
    country_code: ci(2),
  })
  const credentials = object({
    token: text(
      z
        .string()
        .min(1)
        .max(bound(64))
        .regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces'),
    ),
    url: url(),
    roles: list(credentialsRole).min(1),
  })
  const version = object({ version: choose(exact(VERSION_NUMBERS), z.string().max(16)), url: url() })
  const endpoint = object({
    identifier: choose(exact(MODULE_IDS), z.string().max(64)),
    role: exact(INTERFACE_ROLES),
    url: url(),
  })
  const versionDetails = object({
    version: choose(exact(VERSION_NUMBERS), z.string().max(16)),
    endpoints: list(endpoint).min(1),
  })

  /** The partial object of a PATCH: any field, and `last_updated` always. */
  const patch = <T extends z.ZodObject>(schema: T) =>
    schema.partial().extend({ last_updated: dateTime() }) as unknown as z.ZodType<
      Partial<z.output<T>> & { last_updated: string }
    >

  return {
    displayText,
    price,
    geoLocation,
    businessDetails,
    hours,
    energyMix,
    connector,
    evse,
    location,
    locationPatch: patch(location),
    evsePatch: patch(evse),
    connectorPatch: patch(connector),
    cdrToken,
    chargingPeriod,
    session,
    sessionPatch: patch(session),
    tariff,
    cdr,
    token,
    tokenPatch: patch(token),
    locationReferences,
    authorizationInfo,
    startSession,
    stopSession,
    unlockConnector,
    reserveNow,
    cancelReservation,
    commandResponse,
    commandResult,
    chargingProfile,
    setChargingProfile,
    chargingProfileResponse,
    activeChargingProfile,
    activeChargingProfileResult,
    chargingProfileResult,
    clearProfileResult,
    credentialsRole,
    credentials,
    version,
    versions: list(version).min(1),
    endpoint,
    versionDetails,
  }
}

export const ocpi221 = { strict: build('strict'), lenient: build('lenient') }

type Strict = typeof ocpi221.strict
export type DisplayText = z.output<Strict['displayText']>
export type Price = z.output<Strict['price']>
export type Connector = z.output<Strict['connector']>
export type Evse = z.output<Strict['evse']>
export type Location = z.output<Strict['location']>
export type CdrToken = z.output<Strict['cdrToken']>
export type ChargingPeriod = z.output<Strict['chargingPeriod']>
export type Session = z.output<Strict['session']>
export type Tariff = z.output<Strict['tariff']>
export type Cdr = z.output<Strict['cdr']>
export type Token = z.output<Strict['token']>
export type AuthorizationInfo = z.output<Strict['authorizationInfo']>
export type LocationReferences = z.output<Strict['locationReferences']>
export type StartSession = z.output<Strict['startSession']>
export type StopSession = z.output<Strict['stopSession']>
export type UnlockConnector = z.output<Strict['unlockConnector']>
export type ReserveNow = z.output<Strict['reserveNow']>
export type CancelReservation = z.output<Strict['cancelReservation']>
export type CommandResponse = z.output<Strict['commandResponse']>
export type CommandResult = z.output<Strict['commandResult']>
export type ChargingProfile = z.output<Strict['chargingProfile']>
export type SetChargingProfile = z.output<Strict['setChargingProfile']>
export type ChargingProfileResponse = z.output<Strict['chargingProfileResponse']>
export type ActiveChargingProfile = z.output<Strict['activeChargingProfile']>
export type ActiveChargingProfileResult = z.output<Strict['activeChargingProfileResult']>
export type ChargingProfileResult = z.output<Strict['chargingProfileResult']>
export type Credentials = z.output<Strict['credentials']>
export type CredentialsRole = z.output<Strict['credentialsRole']>
export type Version = z.output<Strict['version']>
export type Endpoint = z.output<Strict['endpoint']>
export type VersionDetails = z.output<Strict['versionDetails']>

/** What a lenient parse gives (fields the specification requires may be missing, see above). */
type Lenient = typeof ocpi221.lenient
export type ReceivedLocation = z.output<Lenient['location']>
export type ReceivedEvse = z.output<Lenient['evse']>
export type ReceivedConnector = z.output<Lenient['connector']>
export type ReceivedSession = z.output<Lenient['session']>
export type ReceivedCdr = z.output<Lenient['cdr']>
export type ReceivedTariff = z.output<Lenient['tariff']>
export type ReceivedToken = z.output<Lenient['token']>

/** Issues of a failed parse as `path: message` lines (for OCPI status messages and logs). */
export function describeIssues(error: z.ZodError, max = 5): string {
  const lines = error.issues.slice(0, max).map((issue) => {
    const path = issue.path.map(String).join('.')
    return `${path || '(body)'}: ${issue.message}`
  })
  if (error.issues.length > max) lines.push(`… and ${error.issues.length - max} more`)
  return lines.join('; ')
}

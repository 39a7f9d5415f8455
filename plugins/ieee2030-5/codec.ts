/**
 * 2030.5 / CSIP-AUS XML in and out. In: lenient (real servers deviate from the schema: prefixes
 * vary, `enabled` is `1`, elements are out of order, links lack `all`), but a DOCTYPE or entity
 * declaration is refused outright (no entity expansion, no external entities), as is a body over
 * the size limit or one that is not well-formed. Out: strict — every element in the schema's
 * sequence order (sep.xsd orders each type's elements alphabetically after its base type's),
 * values in range, the 2030.5 default namespace and the CSIP-AUS namespace of the version in use.
 *
 * CSIP-AUS v1.2 and v1.3 differ on the wire only in the extension namespace
 * (`https://csipaus.org/ns` vs `https://csipaus.org/ns/v1.3`) and in v1.3's extra elements
 * (opModStorageTargetW, vppModes*, setMinWh), so one codec takes the version as a parameter.
 */
import { XMLBuilder, XMLParser, XMLValidator } from 'fast-xml-parser'
import { CsipXmlError } from './errors.ts'

export const SEP_NAMESPACE = 'urn:ieee:std:2030.5:ns'
export const CSIP_NAMESPACES = {
  'v1.2': 'https://csipaus.org/ns',
  'v1.3': 'https://csipaus.org/ns/v1.3',
} as const
export type CsipVersion = keyof typeof CSIP_NAMESPACES
export const CONTENT_TYPE = 'application/sep+xml'

export type XmlNode = Record<string, unknown>

/** Elements that repeat in the resources the client reads: always parsed as arrays. */
const REPEATED = new Set([
  'EndDevice',
  'FunctionSetAssignments',
  'DERProgram',
  'DERControl',
  'DER',
  'MirrorUsagePoint',
  'MirrorMeterReading',
  'Reading',
  'Response',
  'Subscription',
])

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  removeNSPrefix: true,
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: true,
  // Only the five predefined entities and character references can occur: DOCTYPE is refused first.
  processEntities: true,
  htmlEntities: false,
  ignoreDeclaration: true,
  ignorePiTags: true,
  isArray: (name, _jpath, _isLeaf, isAttribute) => !isAttribute && REPEATED.has(name),
})

export interface ParsedXml {
  /** Root element's local name, e.g. `DERControlList`. */
  root: string
  node: XmlNode
  /** The CSIP-AUS version whose namespace the document declares, if any. */
  version?: CsipVersion
}

/** Parse a 2030.5 body: lenient about content, strict about safety. */
export function parseXml(text: string, options: { maxBytes?: number } = {}): ParsedXml {
  const maxBytes = options.maxBytes ?? 4 * 1024 * 1024
  if (text.length > maxBytes)
    throw new CsipXmlError(`body of ${text.length} bytes is over the ${maxBytes}-byte limit`)
  if (/<!DOCTYPE/i.test(text) || /<!ENTITY/i.test(text))
    throw new CsipXmlError('DOCTYPE and entity declarations are refused')
  const valid = XMLValidator.validate(text)
  if (valid !== true) throw new CsipXmlError(`malformed XML at line ${valid.err.line}: ${valid.err.msg}`)
  let parsed: XmlNode
  try {
    parsed = parser.parse(text) as XmlNode
  } catch (error) {
    throw new CsipXmlError(`malformed XML: ${(error as Error).message}`, { cause: error })
  }
  const roots = Object.keys(parsed).filter((key) => !key.startsWith('?'))
  const root = roots[0]
  if (roots.length !== 1 || root === undefined) throw new CsipXmlError('the body has no single root element')
  const rootValue = parsed[root]
  const value = Array.isArray(rootValue) ? rootValue[0] : rootValue
  const node = (typeof value === 'object' && value !== null ? value : { '#text': value }) as XmlNode
  const version = text.includes(CSIP_NAMESPACES['v1.3'])
    ? 'v1.3'
    : text.includes(CSIP_NAMESPACES['v1.2'])
      ? 'v1.2'
      : undefined
  return { root, node, ...(version ? { version } : {}) }
}

// ── lenient readers ─────────────────────────────────────────────────────────────────────────────

export function child(node: XmlNode | undefined, name: string): XmlNode | undefined {
  const value = node?.[name]
  const first = Array.isArray(value) ? value[0] : value
  if (first === undefined || first === null) return undefined
  return typeof first === 'object' ? (first as XmlNode) : { '#text': first }
}

export function children(node: XmlNode | undefined, name: string): XmlNode[] {
  const value = node?.[name]
  if (value === undefined || value === null) return []
  return (Array.isArray(value) ? value : [value]).map((item) =>
    typeof item === 'object' && item !== null ? (item as XmlNode) : { '#text': item },
  )
}

export function text(node: XmlNode | undefined, name: string): string | undefined {
  const value = node?.[name]
  const first = Array.isArray(value) ? value[0] : value
  if (first === undefined || first === null) return undefined
  if (typeof first === 'object') {
    const inner = (first as XmlNode)['#text']
    return inner === undefined ? undefined : String(inner).trim()
  }
  return String(first).trim()
}

export function integer(node: XmlNode | undefined, name: string): number | undefined {
  const value = text(node, name)
  if (value === undefined || !/^[+-]?\d+$/.test(value)) return undefined
  const number = Number(value)
  return Number.isSafeInteger(number) ? number : undefined
}

export function boolean(node: XmlNode | undefined, name: string): boolean | undefined {
  const value = text(node, name)?.toLowerCase()
  if (value === 'true' || value === '1') return true
  if (value === 'false' || value === '0') return false
  return undefined
}

export function attribute(node: XmlNode | undefined, name: string): string | undefined {
  const value = node?.[`@${name}`]
  return value === undefined || value === null ? undefined : String(value)
}

export function integerAttribute(node: XmlNode | undefined, name: string): number | undefined {
  const value = attribute(node, name)
  return value !== undefined && /^\d+$/.test(value) ? Number(value) : undefined
}

/** `<XLink href="…"/>` → its href. */
export function link(node: XmlNode | undefined, name: string): string | undefined {
  return attribute(child(node, name), 'href')
}

// ── strict writer ───────────────────────────────────────────────────────────────────────────────

/** An element's content in schema order: `[name, value]` pairs; undefined values are left out. */
export type Content = [string, Scalar | Content | Element | undefined][]
export type Scalar = string | number | boolean | bigint
/** A nested element with attributes. */
export interface Element {
  attributes: Record<string, Scalar | undefined>
  content: Content
}

const builder = new XMLBuilder({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  preserveOrder: true,
  suppressEmptyNode: true,
  processEntities: true,
  format: false,
})

type Ordered = Record<string, unknown>[]

function toOrdered(content: Content): Ordered {
  const out: Ordered = []
  for (const [name, value] of content) {
    if (value === undefined) continue
    if (Array.isArray(value)) out.push({ [name]: toOrdered(value) })
    else if (typeof value === 'object') {
      const attrs = Object.fromEntries(
        Object.entries(value.attributes)
          .filter(([, v]) => v !== undefined)
          .map(([k, v]) => [`@${k}`, String(v)]),
      )
      out.push({ [name]: toOrdered(value.content), ...(Object.keys(attrs).length ? { ':@': attrs } : {}) })
    } else out.push({ [name]: [{ '#text': typeof value === 'boolean' ? String(value) : String(value) }] })
  }
  return out
}

/** Serialise a root element (its name may carry a `csipaus:` prefix) with the version's namespaces. */
export function writeXml(
  root: string,
  content: Content,
  version: CsipVersion,
  attributes: Record<string, Scalar | undefined> = {},
): string {
  const usesCsip = root.startsWith('csipaus:') || JSON.stringify(content).includes('"csipaus:')
  const namespaces: Record<string, string> = root.startsWith('csipaus:')
    ? { '@xmlns:csipaus': CSIP_NAMESPACES[version] }
    : { '@xmlns': SEP_NAMESPACE, ...(usesCsip ? { '@xmlns:csipaus': CSIP_NAMESPACES[version] } : {}) }
  const attrs = {
    ...namespaces,
    ...Object.fromEntries(
      Object.entries(attributes)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => [`@${k}`, String(v)]),
    ),
  }
  return `<?xml version="1.0" encoding="UTF-8"?>\n${builder.build([{ [root]: toOrdered(content), ':@': attrs }])}`
}

// ── value types ─────────────────────────────────────────────────────────────────────────────────

const INT16 = 32_767

/** W → ActivePower `{multiplier, value}`: the smallest power of ten whose value fits Int16. */
export function activePower(watts: number): Content {
  let multiplier = 0
  let value = Math.round(watts)
  while (Math.abs(value) > INT16 && multiplier < 9) {
    multiplier += 1
    value = Math.round(watts / 10 ** multiplier)
  }
  return [
    ['multiplier', multiplier],
    ['value', value],
  ]
}

/** ActivePower (value × 10^multiplier W) → W; undefined when absent or malformed. */
export function readActivePower(node: XmlNode | undefined): number | undefined {
  if (!node) return undefined
  const value = integer(node, 'value')
  const multiplier = integer(node, 'multiplier') ?? 0
  if (value === undefined || multiplier < -9 || multiplier > 9) return undefined
  return value * 10 ** multiplier
}

/** HexBinary of a bitmap with `digits` hex digits (upper case, zero padded). */
export function hexBinary(value: number, digits: number): string {
  return value.toString(16).toUpperCase().padStart(digits, '0')
}

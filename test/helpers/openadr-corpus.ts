/**
 * A request corpus generated from an OpenADR OpenAPI document: for every operation that takes a
 * JSON body and every schema its body may follow (each `oneOf` alternative on its own), a minimal
 * valid instance (required members only) and a full one (every member), and from the full one
 * invalid instances (each member in turn of a wrong type, each required member in turn missing,
 * each enum member in turn out of its enum); for every query parameter a valid and invalid
 * values. Values come from the document's examples, else from the schema (enum, format,
 * pattern, bounds). The corpus checks itself: each instance is validated against the document
 * with the contract's own ajv, so a valid instance that does not validate, or an invalid one
 * that does, is a generator bug the test reports, not a silent gap.
 */
import type { Contract, Operation } from '../../plugins/openadr/contract.ts'

// biome-ignore lint/suspicious/noExplicitAny: walks arbitrary JSON Schema.
type Schema = any
type Json = unknown

export interface BodyInstance {
  /** `minimal`, `full`, or the mutation: `/path wrong type`, `/path missing`, `/path not in enum`. */
  label: string
  /** `oneOf` alternative (e.g. `BlVenRequest`) or the body schema's name. */
  variant: string
  body: Record<string, unknown>
  valid: boolean
}

export interface BodyCorpus {
  operation: Operation
  instances: BodyInstance[]
}

const DURATION_PATTERN = /^\^\(-\?\)P/

/** The document behind a contract (the contract keeps it translated to draft-07). */
function documentOf(contract: Contract): { paths: Schema; components: { schemas: Schema } } {
  return (contract as unknown as { document: { paths: Schema; components: { schemas: Schema } } }).document
}

function resolve(schema: Schema, schemas: Schema): { schema: Schema; name?: string } {
  let name: string | undefined
  let current = schema
  for (let guard = 0; current?.$ref && guard < 20; guard++) {
    name = current.$ref.split('/').pop()
    current = schemas[name!]
  }
  return { schema: current, ...(name ? { name } : {}) }
}

function stringFor(schema: Schema): string {
  if (schema.format === 'date-time') return '2026-06-01T12:00:00Z'
  if (schema.format === 'uri') return 'https://example.com/x'
  if (typeof schema.pattern === 'string' && DURATION_PATTERN.test(schema.pattern)) return 'PT1H'
  if (schema.pattern === '^[a-zA-Z0-9_-]*$') return 'id-1'
  return 'x'.repeat(Math.max(1, schema.minLength ?? 1))
}

function fits(schema: Schema, value: Json): boolean {
  if (typeof value !== 'string') return true
  if (schema.format === 'uri') return /^[a-z][a-z0-9+.-]*:\/\/\S+$/i.test(value)
  if (schema.format === 'date-time') return !Number.isNaN(Date.parse(value)) && /T/.test(value)
  if (typeof schema.pattern === 'string') return new RegExp(schema.pattern).test(value)
  return true
}

/** A value for a schema: `full` fills every member, otherwise only required ones. */
export function sample(schema: Schema, schemas: Schema, full: boolean, depth = 0): Json {
  const { schema: node } = resolve(schema, schemas)
  if (!node || depth > 10) return undefined
  if (node.oneOf) return sample(node.oneOf[0], schemas, full, depth + 1)
  if (node.anyOf) return sample(node.anyOf[0], schemas, full, depth + 1)
  if (node.allOf) {
    const parts = node.allOf.map((part: Schema) => sample(part, schemas, full, depth + 1))
    return Object.assign({}, ...parts.filter((part: Json) => part && typeof part === 'object'))
  }
  if (node.enum) return node.enum[0]
  // Examples are used where they fit their own schema (3.0.1's programDescriptions URL example
  // is no URI, for one).
  if (
    node.example !== undefined &&
    node.type !== 'object' &&
    node.type !== 'array' &&
    fits(node, node.example)
  )
    return node.example
  switch (node.type) {
    case 'object':
    case undefined: {
      if (!node.properties) return node.type === 'object' ? {} : undefined
      const out: Record<string, Json> = {}
      const keys = full ? Object.keys(node.properties) : (node.required ?? [])
      for (const key of keys) {
        const value = sample(node.properties[key], schemas, full, depth + 1)
        if (value !== undefined) out[key] = value
      }
      return out
    }
    case 'array': {
      const count = full ? Math.max(1, node.minItems ?? 0) : (node.minItems ?? 0)
      return Array.from({ length: count }, () => sample(node.items, schemas, full, depth + 1))
    }
    case 'integer':
    case 'number': {
      const low = typeof node.minimum === 'number' ? node.minimum : 0
      return typeof node.exclusiveMinimum === 'number' ? node.exclusiveMinimum + 1 : low
    }
    case 'boolean':
      return false
    case 'string':
      return stringFor(node)
    default:
      return undefined
  }
}

/** The schema at a path inside an instance (following $ref, allOf, array items), if known. */
function schemaAt(schema: Schema, schemas: Schema, path: (string | number)[]): Schema {
  let node = resolve(schema, schemas).schema
  for (const step of path) {
    if (!node) return undefined
    if (node.allOf) {
      const holder = node.allOf
        .map((part: Schema) => resolve(part, schemas).schema)
        .find((part: Schema) => part?.properties?.[step] !== undefined)
      node = holder ?? node
    }
    if (node.oneOf) node = resolve(node.oneOf[0], schemas).schema
    node = typeof step === 'number' ? node.items : node.properties?.[step]
    node = resolve(node, schemas).schema
  }
  return node
}

const wrongType = (value: Json): Json =>
  typeof value === 'string'
    ? 12_345
    : typeof value === 'number'
      ? 'not a number'
      : typeof value === 'boolean'
        ? 'yes'
        : Array.isArray(value)
          ? { not: 'an array' }
          : value && typeof value === 'object'
            ? 'not an object'
            : 42

function clone<T>(value: T): T {
  return structuredClone(value)
}

function setAt(target: Json, path: (string | number)[], value: Json | typeof REMOVE): void {
  let node = target as Record<string | number, Json>
  for (const step of path.slice(0, -1)) node = node[step] as Record<string | number, Json>
  const last = path.at(-1)!
  if (value === REMOVE) {
    if (Array.isArray(node)) node.splice(last as number, 1)
    else delete node[last]
  } else node[last] = value
}
const REMOVE = Symbol('remove')

/** Every member path of an instance, depth first, up to `maxDepth` steps. */
function memberPaths(value: Json, maxDepth = 4, prefix: (string | number)[] = []): (string | number)[][] {
  if (prefix.length >= maxDepth || value === null || typeof value !== 'object') return []
  const out: (string | number)[][] = []
  const entries: [string | number, Json][] = Array.isArray(value)
    ? value.slice(0, 1).map((item, index) => [index, item])
    : Object.entries(value)
  for (const [key, child] of entries) {
    out.push([...prefix, key])
    out.push(...memberPaths(child, maxDepth, [...prefix, key]))
  }
  return out
}

const pointer = (path: (string | number)[]) => `/${path.join('/')}`

/** Invalid instances made from a valid one: wrong types, missing required members, values out of enums. */
function mutations(
  schema: Schema,
  schemas: Schema,
  full: Record<string, unknown>,
): Omit<BodyInstance, 'variant'>[] {
  const out: Omit<BodyInstance, 'variant'>[] = []
  for (const path of memberPaths(full)) {
    const value = path.reduce<Json>((node, step) => (node as Record<string | number, Json>)[step], full)
    const wrong = clone(full)
    setAt(wrong, path, wrongType(value))
    out.push({ label: `${pointer(path)} wrong type`, body: wrong, valid: false })
    const member = schemaAt(schema, schemas, path)
    if (member?.enum && typeof value === 'string') {
      const outside = clone(full)
      setAt(outside, path, `${value}_NOT_IN_ENUM`)
      out.push({ label: `${pointer(path)} not in enum`, body: outside, valid: false })
    }
    const parent = schemaAt(schema, schemas, path.slice(0, -1))
    const key = path.at(-1)
    if (typeof key === 'string' && (parent?.required ?? []).includes(key)) {
      const missing = clone(full)
      setAt(missing, path, REMOVE)
      out.push({ label: `${pointer(path)} missing`, body: missing, valid: false })
    }
  }
  return out
}

/** The corpus of one operation's JSON body, before fixing ids (see `fix`). */
export function bodyCorpus(contract: Contract, operation: Operation): BodyCorpus | undefined {
  const document = documentOf(contract)
  const schemas = document.components.schemas
  const method = operation.method.toLowerCase()
  const content = document.paths[operation.template]?.[method]?.requestBody?.content
  const schema = content?.['application/json']?.schema
  if (!schema) return undefined
  const { schema: root, name } = resolve(schema, schemas)
  const variants: { name: string; schema: Schema }[] = root.oneOf
    ? root.oneOf.map((alternative: Schema) => ({
        name: resolve(alternative, schemas).name ?? 'alternative',
        schema: alternative,
      }))
    : [{ name: name ?? 'body', schema }]
  const instances: BodyInstance[] = []
  for (const variant of variants) {
    const minimal = sample(variant.schema, schemas, false) as Record<string, unknown>
    const full = sample(variant.schema, schemas, true) as Record<string, unknown>
    instances.push({ label: 'minimal', variant: variant.name, body: minimal, valid: true })
    instances.push({ label: 'full', variant: variant.name, body: full, valid: true })
    for (const mutation of mutations(variant.schema, schemas, full))
      instances.push({ ...mutation, variant: variant.name })
  }
  return { operation, instances }
}

export interface QueryInstance {
  label: string
  query: string
  valid: boolean
}

/** Valid and invalid values of each query parameter of an operation. */
export function queryCorpus(contract: Contract, operation: Operation): QueryInstance[] {
  const document = documentOf(contract)
  const schemas = document.components.schemas
  const raw = document.paths[operation.template]?.[operation.method.toLowerCase()]
  const parameters = [...(document.paths[operation.template]?.parameters ?? []), ...(raw?.parameters ?? [])]
    .map(
      (parameter: Schema) =>
        resolve(parameter, { ...schemas, ...((document.components as Schema).parameters ?? {}) }).schema,
    )
    .filter((parameter: Schema) => parameter?.in === 'query')
  const out: QueryInstance[] = []
  for (const parameter of parameters) {
    const schema = resolve(parameter.schema ?? {}, schemas).schema
    const name = parameter.name as string
    const one = (value: string) => `${encodeURIComponent(name)}=${encodeURIComponent(value)}`
    switch (schema.type) {
      case 'integer':
        out.push({ label: `${name} in range`, query: one(String(schema.minimum ?? 0)), valid: true })
        out.push({ label: `${name} not an integer`, query: one('abc'), valid: false })
        if (typeof schema.minimum === 'number')
          out.push({ label: `${name} below minimum`, query: one(String(schema.minimum - 1)), valid: false })
        if (typeof schema.maximum === 'number')
          out.push({ label: `${name} above maximum`, query: one(String(schema.maximum + 1)), valid: false })
        break
      case 'boolean':
        out.push({ label: `${name} true`, query: one('true'), valid: true })
        out.push({ label: `${name} not a boolean`, query: one('maybe'), valid: false })
        break
      case 'array': {
        const item = resolve(schema.items, schemas).schema
        const value = String(sample(item, schemas, false))
        out.push({ label: `${name} one value`, query: one(value), valid: true })
        if (item.enum) out.push({ label: `${name} not in enum`, query: one('NOT_A_TYPE'), valid: false })
        break
      }
      default: {
        out.push({
          label: `${name} a value`,
          query: one(String(sample(schema, schemas, false))),
          valid: true,
        })
        if (schema.pattern) out.push({ label: `${name} off pattern`, query: one('bad id!'), valid: false })
      }
    }
  }
  return out
}

/**
 * The OpenADR 3 contract: the official OpenAPI documents of 3.0.1 and 3.1.0 (schemas/), with
 * their component schemas compiled by ajv (+ ajv-formats), and their operations as a routing
 * table. Everything the VTN answers and everything the VEN sends is validated here (strict out);
 * what arrives is validated after the lenient pre-reading of codec.ts (lenient in).
 *
 * The documents are OpenAPI 3.0, whose schema dialect differs from JSON Schema draft-07 in two
 * places this translates: boolean `exclusiveMaximum`/`exclusiveMinimum` (draft-04 style) become
 * numbers, and `example`/`discriminator` are annotations. `nullable` is understood by ajv itself.
 * One erratum of 3.1.0 is mended (see ERRATA): nothing else of the documents is changed.
 */
import Ajv, { type ErrorObject, type ValidateFunction } from 'ajv'
import addFormats from 'ajv-formats'
import document301 from './schemas/openadr-3.0.1.json' with { type: 'json' }
import document310 from './schemas/openadr-3.1.0.json' with { type: 'json' }

export const OPENADR_VERSIONS = ['3.1.0', '3.0.1'] as const
export type OpenAdrVersion = (typeof OPENADR_VERSIONS)[number]

type Json = null | boolean | number | string | Json[] | { [key: string]: Json }
type JsonObject = { [key: string]: Json }

const DOCUMENTS: Record<OpenAdrVersion, JsonObject> = {
  '3.0.1': document301 as unknown as JsonObject,
  '3.1.0': document310 as unknown as JsonObject,
}

/** The document as shipped (for tests that compare it with the official YAML). */
export function openApiDocument(version: OpenAdrVersion): JsonObject {
  return DOCUMENTS[version]
}

export interface Erratum {
  version: OpenAdrVersion
  schema: string
  why: string
  apply(schemas: JsonObject): void
}

/**
 * 3.1.0 defines `ven` as allOf(objectMetadata, BlVenRequest) and `resource` as
 * allOf(objectMetadata, BlResourceRequest): objectMetadata says `objectType` is one of the
 * objectTypes (VEN, RESOURCE, …) while the request schemas require BL_VEN_REQUEST /
 * BL_RESOURCE_REQUEST, so no ven or resource object can ever validate. The request
 * discriminator is dropped from the *response* composition only; objects carry `objectType`
 * VEN / RESOURCE as objectMetadata (and the Definition, "Object Metadata") say.
 */
export const ERRATA: readonly Erratum[] = [
  ...(['ven', 'resource'] as const).map(
    (name): Erratum => ({
      version: '3.1.0',
      schema: name,
      why: `${name}: objectMetadata.objectType and the request discriminator contradict each other`,
      apply: (schemas) => {
        const composed = schemas[name] as { allOf: Json[] }
        const requestRef = (composed.allOf[1] as { $ref: string }).$ref
        const request = structuredClone(schemas[requestRef.split('/').pop()!]) as {
          properties: Record<string, Json>
          required: string[]
        }
        delete request.properties.objectType
        request.required = request.required.filter((key) => key !== 'objectType')
        composed.allOf[1] = request as unknown as Json
      },
    }),
  ),
]

/** OpenAPI 3.0 → JSON Schema draft-07: boolean exclusive bounds become numeric ones. */
function translate(node: Json): Json {
  if (Array.isArray(node)) return node.map(translate)
  if (node === null || typeof node !== 'object') return node
  const out: JsonObject = {}
  for (const [key, value] of Object.entries(node)) out[key] = translate(value)
  for (const [flag, bound] of [
    ['exclusiveMaximum', 'maximum'],
    ['exclusiveMinimum', 'minimum'],
  ] as const) {
    if (typeof out[flag] === 'boolean') {
      if (out[flag] === true && typeof out[bound] === 'number') {
        out[flag] = out[bound]
        delete out[bound]
      } else {
        delete out[flag]
      }
    }
  }
  return out
}

export interface QueryParameter {
  name: string
  type: 'integer' | 'boolean' | 'array' | 'string'
}

export interface Operation {
  id: string
  method: string
  /** Path template, e.g. `/programs/{programID}`. */
  template: string
  pattern: RegExp
  pathParameters: string[]
  query: QueryParameter[]
  /** Content type of the request body, if the operation takes one. */
  requestType?: string
  /** Response statuses the document lists for this operation. */
  statuses: ReadonlySet<number>
  /** Compiled on first use: compiling everything up front costs most of a second. */
  validateQuery?: () => ValidateFunction
  validateRequest?: () => ValidateFunction
  validateResponse: Map<number, () => ValidateFunction>
}

export type Match =
  | { operation: Operation; params: Record<string, string> }
  | { status: 404 | 405; allowed?: string[] }

const METHODS = ['get', 'post', 'put', 'delete', 'patch'] as const

/** Ajv's errors as short readable lines: `/intervals/0/id must be integer`. */
export function describeErrors(errors: readonly ErrorObject[] | null | undefined, limit = 5): string[] {
  if (!errors) return []
  const lines = errors.map((error) => {
    const where = error.instancePath || '(body)'
    const extra =
      error.keyword === 'enum'
        ? `: ${(error.params as { allowedValues: unknown[] }).allowedValues.join(', ')}`
        : error.keyword === 'additionalProperties'
          ? `: ${(error.params as { additionalProperty: string }).additionalProperty}`
          : ''
    return `${where} ${error.message ?? 'is invalid'}${extra}`
  })
  return [...new Set(lines)].slice(0, limit)
}

export class Contract {
  readonly operations: Operation[] = []
  private readonly ajv: Ajv
  private readonly schemaCache = new Map<string, ValidateFunction>()
  private readonly id: string
  private readonly document: JsonObject
  private notificationEnvelope: ValidateFunction | undefined

  constructor(readonly version: OpenAdrVersion) {
    this.id = `openadr-${version}`
    const document = translate(structuredClone(DOCUMENTS[version])) as JsonObject
    const components = document.components as JsonObject
    for (const erratum of ERRATA) {
      if (erratum.version === version) erratum.apply(components.schemas as JsonObject)
    }
    this.ajv = new Ajv({ strict: true, strictTypes: false, allErrors: true })
    addFormats(this.ajv)
    this.ajv.addVocabulary(['example', 'discriminator', 'openapi', 'info', 'paths', 'components', 'servers'])
    this.ajv.addSchema({ $id: this.id, ...document }, this.id)
    this.document = document
    this.buildOperations(document)
  }

  /** Validate a value against a component schema (`event`, `notification`, …). */
  validateSchema(name: string, value: unknown): string[] {
    let validate = this.schemaCache.get(name)
    if (!validate) {
      validate = this.ajv.getSchema(`${this.id}#/components/schemas/${name}`)
      if (!validate) throw new Error(`OpenADR ${this.version} has no schema '${name}'`)
      this.schemaCache.set(name, validate)
    }
    return validate(value) ? [] : describeErrors(validate.errors)
  }

  /**
   * Validate a notification as its `discriminator` (objectType) says: the envelope against
   * `notification`, the object against the schema of its own type. Plain `oneOf` cannot decide
   * here: in 3.1.0 a subscription with a programID fits `event` too.
   */
  validateNotification(notification: unknown): string[] {
    if (!this.notificationEnvelope) {
      const schemas = (this.document.components as JsonObject).schemas as JsonObject
      const envelope = structuredClone(schemas.notification) as { properties: JsonObject }
      envelope.properties.object = { type: 'object' }
      this.notificationEnvelope = this.ajv.compile(this.rebase(envelope as unknown as Json) as object)
    }
    if (!this.notificationEnvelope(notification)) return describeErrors(this.notificationEnvelope.errors)
    const object = (notification as { object: { objectType?: unknown } }).object
    const name = typeof object.objectType === 'string' ? object.objectType.toLowerCase() : ''
    if (!['program', 'event', 'report', 'subscription', 'ven', 'resource'].includes(name))
      return ['/object/objectType is not an object type']
    return this.validateSchema(name, object).map((line) => `/object${line}`)
  }

  private rebase(schema: Json): Json {
    if (Array.isArray(schema)) return schema.map((item) => this.rebase(item))
    if (schema === null || typeof schema !== 'object') return schema
    const out: JsonObject = {}
    for (const [key, value] of Object.entries(schema)) {
      out[key] =
        key === '$ref' && typeof value === 'string' && value.startsWith('#')
          ? `${this.id}${value}`
          : this.rebase(value)
    }
    return out
  }

  match(method: string, path: string): Match {
    const candidates = this.operations.filter((operation) => operation.pattern.test(path))
    if (candidates.length === 0) return { status: 404 }
    const operation = candidates.find((candidate) => candidate.method === method.toUpperCase())
    if (!operation) return { status: 405, allowed: candidates.map((candidate) => candidate.method) }
    const values = operation.pattern.exec(path)!.slice(1)
    const params: Record<string, string> = {}
    operation.pathParameters.forEach((name, index) => {
      params[name] = decodeURIComponent(values[index]!)
    })
    return { operation, params }
  }

  operation(id: string): Operation {
    const found = this.operations.find((operation) => operation.id === id)
    if (!found) throw new Error(`OpenADR ${this.version} has no operation '${id}'`)
    return found
  }

  /** The first of `preferred` that the document lists for the operation (else the last one). */
  status(operation: Operation, ...preferred: number[]): number {
    return preferred.find((status) => operation.statuses.has(status)) ?? preferred.at(-1)!
  }

  /** Read the query string into typed values and validate them (unknown parameters ignored). */
  parseQuery(
    operation: Operation,
    search: URLSearchParams,
  ): { value: Record<string, unknown> } | { errors: string[] } {
    const value: Record<string, unknown> = {}
    for (const parameter of operation.query) {
      const raw = search.getAll(parameter.name)
      if (raw.length === 0) continue
      const last = raw.at(-1)!
      switch (parameter.type) {
        case 'array':
          value[parameter.name] = raw
          break
        case 'integer':
          value[parameter.name] = /^-?\d{1,10}$/.test(last) ? Number(last) : last
          break
        case 'boolean':
          value[parameter.name] = last === 'true' ? true : last === 'false' ? false : last
          break
        default:
          value[parameter.name] = last
      }
    }
    const validate = operation.validateQuery?.()
    if (validate && !validate(value)) {
      return { errors: describeErrors(validate.errors).map((line) => `query ${line.trim()}`) }
    }
    return { value }
  }

  validateRequest(operation: Operation, body: unknown): string[] {
    const validate = operation.validateRequest?.()
    if (!validate) return []
    return validate(body) ? [] : describeErrors(validate.errors)
  }

  /** Problems of a response body for this status; an unlisted status is a problem itself. */
  validateResponse(operation: Operation, status: number, body: unknown): string[] {
    if (!operation.statuses.has(status)) return [`status ${status} is not a response of ${operation.id}`]
    const validate = operation.validateResponse.get(status)?.()
    if (!validate) return []
    return validate(body) ? [] : describeErrors(validate.errors)
  }

  private lazy(schema: object): () => ValidateFunction {
    let compiled: ValidateFunction | undefined
    return () => {
      compiled ??= this.ajv.compile(schema)
      return compiled
    }
  }

  private buildOperations(document: JsonObject): void {
    const paths = document.paths as Record<string, JsonObject>
    const root = this.id
    const rebase = (schema: Json): Json => this.rebase(schema)
    const resolve = (node: JsonObject): { node: JsonObject; pointer?: string } => {
      const ref = node.$ref
      if (typeof ref !== 'string') return { node }
      let target: Json = document
      for (const token of ref.slice(2).split('/'))
        target = (target as JsonObject)[token.replaceAll('~1', '/').replaceAll('~0', '~')]!
      return { node: target as JsonObject, pointer: ref }
    }
    const pointerToken = (token: string) => token.replaceAll('~', '~0').replaceAll('/', '~1')
    for (const [template, item] of Object.entries(paths)) {
      const shared = (item.parameters as JsonObject[] | undefined) ?? []
      for (const method of METHODS) {
        const raw = item[method] as JsonObject | undefined
        if (!raw) continue
        const parameters = [...shared, ...((raw.parameters as JsonObject[] | undefined) ?? [])].map(
          (parameter) => resolve(parameter).node,
        )
        const pathParameters: string[] = []
        const pattern = new RegExp(
          `^${template.replace(/\{([^}]+)\}/g, (_all, name: string) => {
            pathParameters.push(name)
            return '([^/]+)'
          })}$`,
        )
        const query: QueryParameter[] = []
        const properties: JsonObject = {}
        for (const parameter of parameters) {
          if (parameter.in !== 'query') continue
          const schema = resolve((parameter.schema as JsonObject | undefined) ?? {}).node
          const type =
            schema.type === 'array' || schema.type === 'integer' || schema.type === 'boolean'
              ? schema.type
              : 'string'
          query.push({ name: parameter.name as string, type })
          properties[parameter.name as string] = rebase(parameter.schema ?? {})
        }
        const base = `${root}#/paths/${pointerToken(template)}/${method}`
        let requestType: string | undefined
        let validateRequest: (() => ValidateFunction) | undefined
        const body = raw.requestBody as JsonObject | undefined
        if (body) {
          const content = body.content as JsonObject
          requestType = Object.keys(content)[0]
          if (requestType) {
            validateRequest = this.lazy({
              $ref: `${base}/requestBody/content/${pointerToken(requestType)}/schema`,
            })
          }
        }
        const validateResponse = new Map<number, () => ValidateFunction>()
        const statuses = new Set<number>()
        for (const [code, response] of Object.entries(raw.responses as JsonObject)) {
          const status = Number(code)
          if (!Number.isInteger(status)) continue
          statuses.add(status)
          const resolved = resolve(response as JsonObject)
          const content = resolved.node.content as JsonObject | undefined
          if (!content?.['application/json']) continue
          const pointer = resolved.pointer
            ? `${root}${resolved.pointer}/content/application~1json/schema`
            : `${base}/responses/${code}/content/application~1json/schema`
          validateResponse.set(status, this.lazy({ $ref: pointer }))
        }
        this.operations.push({
          id: raw.operationId as string,
          method: method.toUpperCase(),
          template,
          pattern,
          pathParameters,
          query,
          ...(requestType ? { requestType } : {}),
          statuses,
          ...(query.length > 0 ? { validateQuery: this.lazy({ type: 'object', properties }) } : {}),
          ...(validateRequest ? { validateRequest } : {}),
          validateResponse,
        })
      }
    }
  }
}

const contracts = new Map<OpenAdrVersion, Contract>()

/** The compiled contract of a version (compiled once per process). */
export function contractFor(version: OpenAdrVersion): Contract {
  let contract = contracts.get(version)
  if (!contract) {
    contract = new Contract(version)
    contracts.set(version, contract)
  }
  return contract
}

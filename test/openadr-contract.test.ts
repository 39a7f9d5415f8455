/**
 * Contract tests of the VTN in a real node, driven by the official OpenAPI documents: every
 * operation refuses a missing, unknown or expired token; every write refuses malformed bodies,
 * wrong types and missing required fields; requests generated from the documents' schemas get
 * answers the documents allow; lenient reading (nulls, unknown fields, offsets); the body bound;
 * wrong roles and other VENs' objects. A request corpus generated from the documents (every
 * operation with a body, every body schema and `oneOf` alternative, minimal and full valid
 * instances and invalid ones made from them; every query parameter, valid and invalid; every
 * path id) is sent end to end: valid requests are carried out, invalid ones refused with 400.
 * Every answer is checked against the document, and the node stays ready throughout.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { freePort } from '../data-plane/index.ts'
import { contractFor, OPENADR_VERSIONS, type OpenAdrVersion } from '../plugins/openadr/contract.ts'
import { type AnyJson, RawOpenAdrClient } from '../plugins/openadr/testing.ts'
import { cleanupAll, type RunningNode, startNode } from './helpers/node-process.ts'
import { type BodyInstance, bodyCorpus, queryCorpus } from './helpers/openadr-corpus.ts'

let node: RunningNode
let base: string
const SECRETS = {
  bl: 'bl-secret-123',
  ven1: 'ven1-secret-123',
  ven2: 'ven2-secret-123',
  /** The corpus' VEN (owns a ven, a resource, reports) and one that registers and is removed again. */
  cven: 'cven-secret-123',
  cven2: 'cven2-secret-123',
}

beforeAll(async () => {
  const port = await freePort()
  base = `http://127.0.0.1:${port}`
  node = await startNode({
    config: `[plugins.openadr-vtn]
enabled = true
listen = "127.0.0.1:${port}"
token_lifetime = "2s"
max_body_bytes = 4096
max_reports = 100
${Object.entries(SECRETS)
  .map(
    ([id, secret]) =>
      `[plugins.openadr-vtn.clients.${id}]\nsecret = "${secret}"\nrole = "${id === 'bl' ? 'bl' : 'ven'}"\n`,
  )
  .join('')}`,
  })
})

afterAll(async () => {
  await cleanupAll()
})

const client = (id: keyof typeof SECRETS, version: OpenAdrVersion) =>
  new RawOpenAdrClient(base, version, id, SECRETS[id])

async function expectAnswer(
  who: RawOpenAdrClient,
  method: string,
  path: string,
  status: number,
  options: { body?: unknown; raw?: string; token?: string | null; headers?: Record<string, string> } = {},
) {
  const answer = await who.request(method, path, options.body, options)
  expect(answer.status, `${who.version} ${method} ${path}: ${JSON.stringify(answer.body)}`).toBe(status)
  expect(who.check(method, path, answer), `${method} ${path}`).toEqual([])
  if (status >= 400) expect(answer.body).toMatchObject({ status, title: expect.any(String) })
  return answer
}

async function ready(): Promise<void> {
  expect((await fetch(`${node.api}/readyz`)).status).toBe(200)
}

/** A value for a schema, from the document's examples (what a generated client would send). */
function sample(schema: AnyJson, components: AnyJson, depth = 0): unknown {
  if (!schema || depth > 8) return undefined
  if (schema.$ref) return sample(components.schemas[schema.$ref.split('/').pop()], components, depth + 1)
  if (schema.oneOf) return sample(schema.oneOf[0], components, depth + 1)
  if (schema.allOf)
    return Object.assign({}, ...schema.allOf.map((part: unknown) => sample(part, components, depth + 1)))
  if (schema.example !== undefined && schema.type !== 'object' && schema.type !== 'array')
    return schema.example
  if (schema.enum) return schema.enum[0]
  switch (schema.type) {
    case 'object': {
      const out: Record<string, unknown> = {}
      for (const key of schema.required ?? [])
        out[key] = sample(schema.properties?.[key], components, depth + 1)
      return out
    }
    case 'array':
      return []
    case 'integer':
    case 'number':
      return 0
    case 'boolean':
      return false
    default:
      return 'x'
  }
}

describe.each(OPENADR_VERSIONS)('OpenADR %s', (version) => {
  const contract = contractFor(version)
  const secured = contract.operations.filter(
    (operation) => !['fetchToken', 'getAuthServerInfo'].includes(operation.id),
  )
  const authStatus = (id: string) => contract.status(contract.operation(id), 401, 403)
  const pathOf = (template: string) => template.replace(/\{[^}]+\}/g, 'some-id')

  test('every secured operation refuses a missing or unknown token with a problem (401, or 403 where 401 is not listed)', async () => {
    const anonymous = client('bl', version)
    for (const operation of secured) {
      const path = pathOf(operation.template)
      for (const token of [null, 'made-up-token']) {
        const answer = await anonymous.request(operation.method, path, undefined, { token })
        expect(answer.status, `${operation.method} ${path}`).toBe(authStatus(operation.id))
        expect(answer.body).toMatchObject({ status: answer.status })
        expect(answer.headers.get('www-authenticate')).toMatch(/^Bearer/)
      }
    }
    await ready()
  })

  test('an expired token is refused', async () => {
    const bl = client('bl', version)
    await bl.login()
    await expectAnswer(bl, 'GET', '/programs', 200)
    await Bun.sleep(2100)
    await expectAnswer(bl, 'GET', '/programs', authStatus('searchAllPrograms'))
  })

  test('requests generated from the document: minimal bodies from its schemas get answers it allows', async () => {
    const bl = client('bl', version)
    const ven = client('ven1', version)
    await bl.login()
    await ven.login()
    const document = contract as unknown as { document: { components: AnyJson } }
    const components = document.document.components
    for (const operation of contract.operations.filter(
      (op) => op.method === 'POST' && op.id !== 'fetchToken',
    )) {
      const path = pathOf(operation.template)
      const raw = (contract as unknown as { document: AnyJson }).document.paths[operation.template].post
      const schema = raw.requestBody.content['application/json'].schema
      const body = sample(schema, components)
      const who = operation.id === 'createReport' ? ven : bl
      const answer = await who.request('POST', path, body)
      expect(
        operation.statuses.has(answer.status),
        `${operation.id} → ${answer.status} ${JSON.stringify(answer.body)}`,
      ).toBe(true)
      expect(who.check('POST', path, answer)).toEqual([])
    }
    await ready()
  })

  test('malformed JSON, wrong types, missing required fields, non-objects: 400 with a problem', async () => {
    const bl = client('bl', version)
    await bl.login()
    await expectAnswer(bl, 'POST', '/programs', 400, { raw: '{"programName": ' })
    await expectAnswer(bl, 'POST', '/programs', 400, { body: [] })
    await expectAnswer(bl, 'POST', '/programs', 400, { body: {} })
    await expectAnswer(bl, 'POST', '/programs', 400, { body: { programName: 42 } })
    await expectAnswer(bl, 'POST', '/programs', 400, {
      body: { programName: 'p', intervalPeriod: { start: 'yesterday' } },
    })
    await expectAnswer(bl, 'POST', '/events', 400, { body: { programID: 'bad id!' } })
    await expectAnswer(bl, 'POST', '/events', 400, {
      body: { programID: 'p1', intervals: [{ id: 'zero', payloads: [] }] },
    })
    await expectAnswer(bl, 'POST', '/programs', 400, {
      raw: 'programName=x',
      headers: { 'content-type': 'text/plain' },
    })
    await expectAnswer(bl, 'GET', '/programs?limit=-1', 400)
    await expectAnswer(bl, 'GET', '/programs?skip=abc', 400)
    await ready()
  })

  test('lenient in: explicit nulls, unknown fields, offsets; strict out', async () => {
    const bl = client('bl', version)
    await bl.login()
    const created = await expectAnswer(bl, 'POST', '/programs', 201, {
      body: {
        programName: `lenient-${version}`,
        programDescriptions: null,
        targets: null,
        payloadDescriptors: null,
        surprise: { nested: true },
        id: 'i-choose',
        createdDateTime: '1999-01-01T00:00:00Z',
        intervalPeriod: { start: '2026-06-01T12:00:00+02:00', duration: 'P1D', extra: 1 },
      },
    })
    const body = created.body as Record<string, AnyJson>
    expect(body.id).not.toBe('i-choose')
    expect(body.createdDateTime).not.toBe('1999-01-01T00:00:00Z')
    expect(body.surprise).toBeUndefined()
    expect(body.intervalPeriod).toEqual({ start: '2026-06-01T10:00:00.000Z', duration: 'P1D' })
    expect(Object.keys(body).sort()).toEqual([
      'createdDateTime',
      'id',
      'intervalPeriod',
      'modificationDateTime',
      'objectType',
      'programName',
    ])
    await expectAnswer(bl, 'DELETE', `/programs/${body.id}`, 200)
    await expectAnswer(bl, 'GET', `/programs/${body.id}`, 404)
  })

  test('bodies over the bound: 413 with a problem, before anything else', async () => {
    const bl = client('bl', version)
    await bl.login()
    const big = { programName: 'big', attributes: [{ type: 'X', values: ['y'.repeat(5000)] }] }
    const answer = await bl.request('POST', '/programs', big)
    expect(answer.status).toBe(413)
    expect(answer.body).toMatchObject({ status: 413 })
    const anonymous = await bl.request('POST', '/programs', big, { token: null })
    expect(anonymous.status).toBe(413)
    await ready()
  })

  test("wrong role and another VEN's objects", async () => {
    const bl = client('bl', version)
    const ven1 = client('ven1', version)
    const ven2 = client('ven2', version)
    await Promise.all([bl.login(), ven1.login(), ven2.login()])
    await expectAnswer(ven1, 'POST', '/programs', 403, { body: { programName: 'mine' } })
    const program = await expectAnswer(bl, 'POST', '/programs', 201, {
      body: { programName: `roles-${version}` },
    })
    const programID = (program.body as { id: string }).id
    await expectAnswer(ven1, 'PUT', `/programs/${programID}`, 403, { body: { programName: 'renamed' } })
    await expectAnswer(ven1, 'DELETE', `/programs/${programID}`, 403)
    await expectAnswer(ven1, 'POST', '/events', 403, { body: { programID, intervals: [] } })
    const name = `ven-${version}`
    const venBody = version === '3.1.0' ? { objectType: 'VEN_VEN_REQUEST', venName: name } : { venName: name }
    const ven = await expectAnswer(ven1, 'POST', '/vens', 201, { body: venBody })
    const venID = (ven.body as { id: string }).id
    await expectAnswer(ven2, 'GET', `/vens/${venID}`, 404)
    await expectAnswer(ven2, 'PUT', `/vens/${venID}`, 404, { body: venBody })
    await expectAnswer(ven2, 'DELETE', `/vens/${venID}`, 404)
    expect((await expectAnswer(ven2, 'GET', '/vens', 200)).body).toEqual([])
    const subscription = await expectAnswer(ven1, 'POST', '/subscriptions', 201, {
      body: {
        clientName: name,
        programID,
        objectOperations: [
          { objects: ['EVENT'], operations: ['CREATE'], callbackUrl: 'http://127.0.0.1:9/cb' },
        ],
      },
    })
    const subscriptionID = (subscription.body as { id: string }).id
    await expectAnswer(ven2, 'GET', `/subscriptions/${subscriptionID}`, 404)
    await expectAnswer(ven2, 'DELETE', `/subscriptions/${subscriptionID}`, 404)
    await expectAnswer(bl, 'GET', `/subscriptions/${subscriptionID}`, 200)
    await expectAnswer(ven1, 'DELETE', `/subscriptions/${subscriptionID}`, 200)
    await expectAnswer(bl, 'DELETE', `/vens/${venID}`, 200)
    await ready()
  })
})

/** Ids of objects the corpus' requests refer to, per version. */
interface CorpusObjects {
  programID: string
  eventID: string
  venID: string
  resourceID: string
  reportID: string
  subscriptionID: string
}

let unique = 0

/**
 * Make a generated body refer to objects that exist and use names nobody has (ids, names and
 * callback URLs from the document's examples would collide or point off this machine).
 */
function fix(body: unknown, objects: CorpusObjects, variant: string): unknown {
  if (Array.isArray(body)) return body.map((item) => fix(item, objects, variant))
  if (body === null || typeof body !== 'object') return body
  const out: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(body)) {
    unique += 1
    if (typeof value !== 'string') out[key] = fix(value, objects, variant)
    else if (key === 'programID') out[key] = objects.programID
    else if (key === 'eventID') out[key] = objects.eventID
    else if (key === 'venID') out[key] = objects.venID
    else if (key === 'clientID')
      out[key] = variant.startsWith('Bl') && variant.includes('Ven') ? `corpus-client-${unique}` : 'cven'
    else if (['programName', 'venName', 'resourceName'].includes(key)) out[key] = `${value}-${unique}`
    else if (key === 'callbackUrl') out[key] = 'http://127.0.0.1:9/corpus'
    else out[key] = value
  }
  return out
}

describe.each(OPENADR_VERSIONS)('request corpus of OpenADR %s', (version) => {
  const contract = contractFor(version)
  const objects = {} as CorpusObjects
  const pathOf = (template: string, venID = objects.venID) =>
    template.replace(/\{([^}]+)\}/g, (_all, name: string) =>
      name === 'venID' ? venID : ((objects as unknown as Record<string, string>)[name] ?? 'some-id'),
    )

  beforeAll(async () => {
    const bl = client('bl', version)
    const cven = client('cven', version)
    await Promise.all([bl.login(), cven.login()])
    const post = async (who: RawOpenAdrClient, path: string, body: unknown) => {
      const answer = await expectAnswer(who, 'POST', path, 201, { body })
      return (answer.body as { id: string }).id
    }
    objects.programID = await post(bl, '/programs', { programName: `corpus-${version}` })
    objects.eventID = await post(bl, '/events', {
      programID: objects.programID,
      intervals: [{ id: 0, payloads: [{ type: 'PRICE', values: [0.1] }] }],
    })
    objects.venID = await post(
      cven,
      '/vens',
      version === '3.1.0'
        ? { objectType: 'VEN_VEN_REQUEST', venName: `corpus-ven-${version}` }
        : { venName: `corpus-ven-${version}` },
    )
    objects.resourceID = await post(
      cven,
      version === '3.1.0' ? '/resources' : `/vens/${objects.venID}/resources`,
      version === '3.1.0'
        ? { objectType: 'VEN_RESOURCE_REQUEST', resourceName: 'corpus-resource', venID: objects.venID }
        : { resourceName: 'corpus-resource' },
    )
    objects.reportID = await post(cven, '/reports', {
      programID: objects.programID,
      eventID: objects.eventID,
      clientName: 'corpus',
      resources: [],
    })
    objects.subscriptionID = await post(bl, '/subscriptions', {
      clientName: 'corpus',
      programID: objects.programID,
      objectOperations: [
        { objects: ['EVENT'], operations: ['CREATE'], callbackUrl: 'http://127.0.0.1:9/corpus' },
      ],
    })
  })

  afterAll(async () => {
    const bl = client('bl', version)
    await bl.login()
    await bl.delete(`/vens/${objects.venID}`)
  })

  /** Who sends a body: VENs write reports and their own vens and resources, BL the rest. */
  const senderOf = (operationId: string, variant: string): keyof typeof SECRETS =>
    operationId.endsWith('Report') ||
    variant.startsWith('Ven') ||
    (version === '3.0.1' && operationId === 'createVen')
      ? operationId === 'createVen'
        ? 'cven2'
        : 'cven'
      : 'bl'

  const withBody = contract.operations.filter((operation) => operation.requestType === 'application/json')

  /**
   * The corpus of an operation with ids fixed. A mutation the document still accepts (a value of
   * another type a `oneOf` allows, say) is no invalid instance: it is left out.
   */
  const corpusOf = (operation: (typeof withBody)[number]) =>
    bodyCorpus(contract, operation)!
      .instances.map((instance) => ({ ...instance, body: fix(instance.body, objects, instance.variant) }))
      .filter((instance) => instance.valid || contract.validateRequest(operation, instance.body).length > 0)

  /**
   * Invalid by the document, carried out on purpose (lenient in): members the VTN provides
   * itself whatever the client sent. Object metadata (`id`, `createdDateTime`,
   * `modificationDateTime`, which 3.0.1 request bodies carry) is the VTN's to set; `objectType`
   * of a request is its discriminator (the VTN
   * reads the role from the token) and a payload descriptor without one gets the one its place
   * implies (a wrong one is refused); on an
   * update a ven's or resource's `clientID` and a resource's `venID` are the stored ones (in
   * 3.0.1 a resource's ven is the one in its path), and a BL resource takes the `clientID` of
   * its ven.
   */
  const LENIENT: RegExp[] = [
    /^\/(objectType|id|createdDateTime|modificationDateTime) (wrong type|not in enum|missing)$/,
    /^\/payloadDescriptors\/0\/objectType missing$/,
  ]
  const lenient = (operationId: string, variant: string, label: string) =>
    LENIENT.some((pattern) => pattern.test(label)) ||
    (operationId.startsWith('update') && /^\/(clientID|venID) (wrong type|missing)$/.test(label)) ||
    (/^(create|update)Resource|updateVenResource/.test(operationId) &&
      /^\/venID /.test(label) &&
      version === '3.0.1') ||
    (operationId === 'updateVenResource' && /^\/venID /.test(label)) ||
    (operationId === 'createResource' &&
      variant === 'BlResourceRequest' &&
      /^\/clientID missing$/.test(label))

  test('the corpus covers every operation with a JSON body, and checks itself against the document', () => {
    expect(withBody.map((operation) => operation.id).sort()).toEqual(
      [
        'createEvent',
        'createProgram',
        'createReport',
        'createResource',
        'createSubscription',
        'createVen',
        'updateEvent',
        'updateProgram',
        'updateReport',
        'updateSubscription',
        'updateVen',
        'updateVenResource',
      ].sort(),
    )
    let valid = 0
    let invalid = 0
    for (const operation of withBody) {
      const instances = corpusOf(operation)
      const variants = new Set(instances.map((instance) => instance.variant))
      if (['createVen', 'updateVen', 'createResource', 'updateVenResource'].includes(operation.id))
        expect(variants.size, operation.id).toBe(version === '3.1.0' ? 2 : 1)
      for (const instance of instances) {
        const errors = contract.validateRequest(operation, instance.body)
        expect(
          errors.length === 0,
          `${operation.id} ${instance.variant} ${instance.label}: ${errors.join('; ')}`,
        ).toBe(instance.valid)
        if (instance.valid) valid += 1
        else invalid += 1
      }
    }
    expect(valid).toBeGreaterThanOrEqual(withBody.length * 2)
    expect(invalid).toBeGreaterThan(withBody.length * 10)
  })

  test('valid bodies are carried out (201 or 200), invalid ones refused with 400, end to end', async () => {
    const clients = Object.fromEntries(
      (['bl', 'cven', 'cven2'] as const).map((id) => [id, client(id, version)]),
    ) as Record<'bl' | 'cven' | 'cven2', RawOpenAdrClient>
    await Promise.all(Object.values(clients).map((who) => who.login()))
    const bl = clients.bl
    const failures: string[] = []
    for (const operation of withBody) {
      for (const instance of corpusOf(operation) as BodyInstance[]) {
        const who = clients[senderOf(operation.id, instance.variant) as 'bl' | 'cven' | 'cven2']
        const path = pathOf(operation.template)
        const answer = await who.request(operation.method, path, instance.body)
        const carriedOut = instance.valid || lenient(operation.id, instance.variant, instance.label)
        const expected = carriedOut ? (operation.method === 'POST' ? 201 : 200) : 400
        const problems = who.check(operation.method, path, answer)
        if (answer.status !== expected || problems.length > 0)
          failures.push(
            `${operation.id} ${instance.variant} ${instance.label} → ${answer.status} (want ${expected}) ${JSON.stringify(answer.body).slice(0, 200)} ${problems.join('; ')}`,
          )
        // A ven a VEN client created is removed again, so that client may register once more.
        if (answer.status === 201 && operation.id === 'createVen')
          await bl.delete(`/vens/${(answer.body as { id: string }).id}`)
      }
    }
    expect(failures).toEqual([])
    await ready()
  })

  test('query parameters: valid values answer 200, invalid ones 400; malformed path ids 400', async () => {
    const bl = client('bl', version)
    await bl.login()
    const failures: string[] = []
    for (const operation of contract.operations.filter((op) => op.method === 'GET')) {
      const path = pathOf(operation.template)
      for (const instance of queryCorpus(contract, operation)) {
        const answer = await bl.request('GET', `${path}?${instance.query}`)
        const expected = instance.valid ? 200 : 400
        const problems = bl.check('GET', path, answer)
        if (answer.status !== expected || problems.length > 0)
          failures.push(
            `${operation.id} ${instance.label} → ${answer.status} (want ${expected}) ${problems.join('; ')}`,
          )
      }
    }
    for (const operation of contract.operations.filter((op) => op.pathParameters.length > 0)) {
      const path = operation.template.replace(/\{[^}]+\}/g, 'bad%20id!')
      const answer = await bl.request(operation.method, path, operation.requestType ? {} : undefined)
      if (answer.status !== 400) failures.push(`${operation.id} with a malformed id → ${answer.status}`)
    }
    expect(failures).toEqual([])
    await ready()
  })
})

test('unknown paths and methods answer with problems; the node stays ready', async () => {
  for (const [path, status] of [
    ['/openadr3/3.1.0/nothing', 404],
    ['/openadr3/2.0b/programs', 404],
    ['/elsewhere', 404],
  ] as const) {
    const answer = await fetch(`${base}${path}`)
    expect(answer.status).toBe(status)
    expect(await answer.json()).toMatchObject({ status })
  }
  const patch = await fetch(`${base}/openadr3/3.1.0/programs`, { method: 'PATCH' })
  expect(patch.status).toBe(405)
  expect(patch.headers.get('allow')).toBe('GET, POST')
  expect((await fetch(`${node.api}/readyz`)).status).toBe(200)
})

test('subscriptions take only http(s) callbacks; reports beyond max_reports are dropped oldest first', async () => {
  const bl = client('bl', '3.1.0')
  const ven = client('ven2', '3.1.0')
  await Promise.all([bl.login(), ven.login()])
  const program = await expectAnswer(bl, 'POST', '/programs', 201, { body: { programName: 'retention' } })
  const programID = (program.body as { id: string }).id
  for (const callbackUrl of ['file:///etc/passwd', 'ftp://example.com/x']) {
    await expectAnswer(ven, 'POST', '/subscriptions', 400, {
      body: {
        clientName: 'c',
        objectOperations: [{ objects: ['EVENT'], operations: ['CREATE'], callbackUrl }],
      },
    })
  }
  const event = await expectAnswer(bl, 'POST', '/events', 201, { body: { programID, intervals: [] } })
  const eventID = (event.body as { id: string }).id
  const ids: string[] = []
  for (let i = 0; i < 101; i++) {
    const report = await ven.post('/reports', {
      eventID,
      clientName: 'c',
      reportName: `r${i}`,
      resources: [],
    })
    expect(report.status).toBe(201)
    ids.push((report.body as { id: string }).id)
  }
  await bl.login()
  const kept: string[] = []
  for (let skip = 0; skip < 150; skip += 50) {
    const page = (await expectAnswer(bl, 'GET', `/reports?skip=${skip}&limit=50`, 200)).body as {
      id: string
    }[]
    kept.push(...page.map((report) => report.id))
  }
  expect(kept).toHaveLength(100)
  expect(kept).not.toContain(ids[0])
  expect(kept).toContain(ids[100])
  await ready()
})

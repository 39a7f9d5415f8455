/**
 * Contract tests of the VTN in a real node, driven by the official OpenAPI documents: every
 * operation refuses a missing, unknown or expired token; every write refuses malformed bodies,
 * wrong types and missing required fields; requests generated from the documents' schemas get
 * answers the documents allow; lenient reading (nulls, unknown fields, offsets); the body bound;
 * wrong roles and other VENs' objects. Every answer is checked against the document, and the
 * node stays ready throughout.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { freePort } from '../data-plane/index.ts'
import { contractFor, OPENADR_VERSIONS, type OpenAdrVersion } from '../plugins/openadr/contract.ts'
import { type AnyJson, RawOpenAdrClient } from '../plugins/openadr/testing.ts'
import { cleanupAll, type RunningNode, startNode } from './helpers/node-process.ts'

let node: RunningNode
let base: string
const SECRETS = { bl: 'bl-secret-123', ven1: 'ven1-secret-123', ven2: 'ven2-secret-123' }

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

/**
 * The contract itself: the shipped JSON documents are the official YAML, parsed; every
 * operation of both documents is routed; the one erratum mended is one the document needs; and
 * the VTN's own objects validate.
 */
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { TESTDATA as TESTDATA_ROOT } from '../../test/helpers/testdata.ts'
import { Contract, contractFor, ERRATA, OPENADR_VERSIONS, openApiDocument } from './contract.ts'

const TESTDATA = join(TESTDATA_ROOT, 'openadr3')

describe.each(OPENADR_VERSIONS)('OpenADR %s', (version) => {
  test('schemas/openadr-<version>.json is the official openadr3.yaml, parsed', async () => {
    const yaml = await Bun.file(join(TESTDATA, version, 'openadr3.yaml')).text()
    expect(openApiDocument(version)).toEqual(Bun.YAML.parse(yaml))
  })

  test('every operation of the document is routed by method and path', () => {
    const contract = contractFor(version)
    const document = openApiDocument(version) as {
      paths: Record<string, Record<string, { operationId?: string }>>
    }
    let count = 0
    for (const [template, item] of Object.entries(document.paths)) {
      for (const [method, operation] of Object.entries(item)) {
        if (!operation.operationId) continue
        count += 1
        const path = template.replace(/\{[^}]+\}/g, 'id-1')
        const matched = contract.match(method, path)
        expect('operation' in matched && matched.operation.id, `${method} ${path}`).toBe(
          operation.operationId,
        )
      }
    }
    expect(count).toBe(contract.operations.length)
    expect(contract.match('PATCH', '/programs')).toMatchObject({ status: 405 })
    expect(contract.match('GET', '/nothing')).toMatchObject({ status: 404 })
  })

  test('problem bodies and the status rules', () => {
    const contract = contractFor(version)
    const read = contract.operation('searchAllPrograms')
    expect(
      contract.validateResponse(read, 400, {
        type: 'about:blank',
        title: 'Bad Request',
        status: 400,
        detail: 'x',
      }),
    ).toEqual([])
    expect(contract.validateResponse(read, 400, { status: 'x' })).not.toEqual([])
    expect(contract.validateResponse(read, 418, {})).toEqual([
      'status 418 is not a response of searchAllPrograms',
    ])
    expect(contract.status(contract.operation('fetchToken'), 401, 403)).toBe(version === '3.1.0' ? 401 : 403)
  })
})

test('3.1.0 erratum: without it no ven or resource object can validate; with it, they do', () => {
  const now = new Date().toISOString()
  const ven = { id: 'v1', createdDateTime: now, modificationDateTime: now, clientID: 'c', venName: 'n' }
  const mended = contractFor('3.1.0')
  expect(mended.validateSchema('ven', { ...ven, objectType: 'VEN' })).toEqual([])
  expect(ERRATA.map((erratum) => erratum.schema)).toEqual(['ven', 'resource'])
  // The document as published: neither objectType works.
  const saved = [...ERRATA]
  ;(ERRATA as unknown as unknown[]).length = 0
  try {
    const unmended = new Contract('3.1.0')
    expect(unmended.validateSchema('ven', { ...ven, objectType: 'VEN' })).not.toEqual([])
    expect(unmended.validateSchema('ven', { ...ven, objectType: 'BL_VEN_REQUEST' })).not.toEqual([])
  } finally {
    ;(ERRATA as unknown as unknown[]).push(...saved)
  }
})

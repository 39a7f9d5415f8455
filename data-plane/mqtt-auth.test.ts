/**
 * The pieces of the MQTT authorization callout that need no server: topic filters as the NATS
 * subjects a grant allows, and NATS JWTs signed and verified (a changed claim or another key
 * fails). The callout itself runs against a real nats-server in test/openadr-mqtt.test.ts.
 */
import { createAccount } from '@nats-io/nkeys'
import { describe, expect, test } from 'vitest'
import { mqttFilterToSubjects, mqttTopicToSubject, signNatsJwt, verifyNatsJwt } from './mqtt-auth.ts'

describe('topics and subjects', () => {
  test('filters become the subjects nats-server subscribes them to; `a/#` covers `a` itself', () => {
    expect(mqttFilterToSubjects('openadr-vtn/vens/v1/#')).toEqual([
      'openadr-vtn.vens.v1',
      'openadr-vtn.vens.v1.>',
    ])
    expect(mqttFilterToSubjects('openadr-vtn/programs/+')).toEqual(['openadr-vtn.programs.*'])
    expect(mqttTopicToSubject('openadr-vtn/vens/v1/events/create')).toBe('openadr-vtn.vens.v1.events.create')
  })

  test('nothing a grant could widen by accident: dots, `$`, empty levels, `#` inside, spaces', () => {
    for (const filter of ['a.b/#', '$MQTT/sub/#', 'a//b', 'a/#/b', '#x', 'a b', '', '/a'])
      expect(() => mqttFilterToSubjects(filter), filter).toThrow()
    for (const topic of ['a/+', 'a/#', 'a.b', '$SYS/x', ''])
      expect(() => mqttTopicToSubject(topic), topic).toThrow()
  })
})

describe('NATS JWTs', () => {
  test('signed by the issuer key, verified by its public key; a changed claim or a foreign key fails', () => {
    const issuer = createAccount()
    const token = signNatsJwt(issuer, { sub: 'UABC', nats: { type: 'user', version: 2 } })
    const claims = verifyNatsJwt(token)
    expect(claims).toMatchObject({ iss: issuer.getPublicKey(), sub: 'UABC', jti: expect.any(String) })
    const [header, body, signature] = token.split('.')
    const changed = Buffer.from(
      JSON.stringify({ ...JSON.parse(Buffer.from(body!, 'base64url').toString()), sub: 'UXYZ' }),
    ).toString('base64url')
    expect(verifyNatsJwt(`${header}.${changed}.${signature}`)).toBeUndefined()
    const other = createAccount()
    const claimed = Buffer.from(
      JSON.stringify({
        ...JSON.parse(Buffer.from(body!, 'base64url').toString()),
        iss: other.getPublicKey(),
      }),
    ).toString('base64url')
    expect(verifyNatsJwt(`${header}.${claimed}.${signature}`)).toBeUndefined()
    expect(verifyNatsJwt('not.a.jwt')).toBeUndefined()
  })
})

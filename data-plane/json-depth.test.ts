import { expect, test } from 'vitest'
import { MAX_JSON_DEPTH, nestsDeeperThan } from './json-depth.ts'

test('nesting is counted on the text, strings and escaped quotes skipped', () => {
  expect(nestsDeeperThan('[]', 1)).toBe(false)
  expect(nestsDeeperThan(`${'['.repeat(MAX_JSON_DEPTH)}${']'.repeat(MAX_JSON_DEPTH)}`)).toBe(false)
  expect(nestsDeeperThan(`${'['.repeat(MAX_JSON_DEPTH + 1)}${']'.repeat(MAX_JSON_DEPTH + 1)}`)).toBe(true)
  expect(nestsDeeperThan(`{"a":"${'['.repeat(1000)}"}`)).toBe(false)
  expect(nestsDeeperThan(`{"a":"\\"${'{'.repeat(1000)}"}`)).toBe(false)
  expect(nestsDeeperThan('{"a":{"b":{"c":1}}}', 2)).toBe(true)
  expect(nestsDeeperThan('{"a":{"b":1},"c":{"d":2}}', 2)).toBe(false)
})

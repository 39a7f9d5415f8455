/**
 * Strict validation against the official OCPP JSON schemas (shipped with ocpp-rpc), for calls in
 * both directions and for the answers. ocpp-rpc answers an action its schema set does not know
 * with ProtocolError; OCPP-J says NotImplemented ("requested Action is not known by receiver"),
 * so the standard validators are wrapped to say that. Its violations carry the whole offending
 * payload as details, which a CALLERROR would echo back: the wrapper keeps the first problems
 * only, within MAX_ERROR_DETAIL characters.
 */
import { createRPCError } from 'ocpp-rpc'
import standardValidators from 'ocpp-rpc/lib/standard-validators'
import type { Validator } from 'ocpp-rpc/lib/validator'

export const OCPP_VERSIONS = ['ocpp2.0.1', 'ocpp1.6'] as const
export type OcppVersion = (typeof OCPP_VERSIONS)[number]

/** Characters of a violation's description and of its details that go back to a station. */
export const MAX_ERROR_DETAIL = 512

const cut = (text: unknown, max: number): string => {
  const value = String(text)
  return value.length > max ? `${value.slice(0, max)}…` : value
}

interface AjvProblem {
  instancePath?: unknown
  keyword?: unknown
  message?: unknown
}

/** The details of a violation without the payload, within MAX_ERROR_DETAIL characters. */
export function cappedDetails(details: unknown): Record<string, unknown> {
  const problems = ((details as { errors?: unknown })?.errors ?? []) as AjvProblem[]
  const errors: Record<string, string>[] = []
  for (const problem of Array.isArray(problems) ? problems.slice(0, 3) : []) {
    const next = {
      instancePath: cut(problem.instancePath ?? '', 100),
      keyword: cut(problem.keyword ?? '', 40),
      message: cut(problem.message ?? '', 150),
    }
    if (JSON.stringify({ errors: [...errors, next] }).length > MAX_ERROR_DETAIL) break
    errors.push(next)
  }
  return errors.length > 0 ? { errors } : {}
}

function wrap(standard: Validator): Validator {
  const wrapped = Object.create(standard) as Validator
  wrapped.validate = (schemaId: string, params: unknown) => {
    if (!standard._ajv.getSchema(schemaId)) {
      const action = cut(schemaId.replace(/^urn:/, '').replace(/\.(req|conf)$/, ''), 100)
      throw createRPCError('NotImplemented', `'${action}' is not an action of ${standard.subprotocol}`, {})
    }
    try {
      return standard.validate(schemaId, params)
    } catch (error) {
      const violation = error as Error & { details?: unknown }
      violation.message = cut(violation.message, MAX_ERROR_DETAIL)
      violation.details = cappedDetails(violation.details)
      throw violation
    }
  }
  return wrapped
}

/** One validator per supported version, replacing ocpp-rpc's built-in ones for these versions. */
export const strictValidators: Validator[] = standardValidators
  .filter((validator) => (OCPP_VERSIONS as readonly string[]).includes(validator.subprotocol))
  .map(wrap)

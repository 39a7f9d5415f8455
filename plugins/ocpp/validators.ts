/**
 * Strict validation against the official OCPP JSON schemas (shipped with ocpp-rpc), for calls in
 * both directions and for the answers. ocpp-rpc answers an action its schema set does not know
 * with ProtocolError; OCPP-J says NotImplemented ("requested Action is not known by receiver"),
 * so the standard validators are wrapped to say that.
 */
import { createRPCError } from 'ocpp-rpc'
import standardValidators from 'ocpp-rpc/lib/standard-validators'
import type { Validator } from 'ocpp-rpc/lib/validator'

export const OCPP_VERSIONS = ['ocpp2.0.1', 'ocpp1.6'] as const
export type OcppVersion = (typeof OCPP_VERSIONS)[number]

function wrap(standard: Validator): Validator {
  const wrapped = Object.create(standard) as Validator
  wrapped.validate = (schemaId: string, params: unknown) => {
    if (!standard._ajv.getSchema(schemaId)) {
      const action = schemaId.replace(/^urn:/, '').replace(/\.(req|conf)$/, '')
      throw createRPCError('NotImplemented', `'${action}' is not an action of ${standard.subprotocol}`, {})
    }
    return standard.validate(schemaId, params)
  }
  return wrapped
}

/** One validator per supported version, replacing ocpp-rpc's built-in ones for these versions. */
export const strictValidators: Validator[] = standardValidators
  .filter((validator) => (OCPP_VERSIONS as readonly string[]).includes(validator.subprotocol))
  .map(wrap)

/**
 * How a node says no on a protocol stream: the refusal is audited (with the error's name and
 * reason), answered as `{ok: false, error, message}`, and the stream closed.
 */
import type { Stream } from '@libp2p/interface'
import type { Logger } from '../data-plane/index.ts'
import { FederationError } from './errors.ts'
import type { AuditSink } from './flows.ts'
import { writeFrame } from './frames.ts'

export async function refuseStream(
  stream: Stream,
  refusal: {
    peer: string
    id?: string | undefined
    error: Error
    auditType: string
    /** More facts for the audit entry. */
    details?: Record<string, unknown> | undefined
  },
  components: { audit: AuditSink; logger: Logger },
): Promise<void> {
  const { error } = refusal
  const name = error instanceof FederationError ? error.name : 'InternalError'
  if (!(error instanceof FederationError)) {
    components.logger.error({ err: error.message }, 'protocol message failed')
  }
  await components.audit.append(refusal.auditType, {
    peer: refusal.peer,
    ...(refusal.id ? { id: refusal.id } : {}),
    ...refusal.details,
    error: name,
    reason: error.message,
  })
  try {
    await writeFrame(stream, { ok: false, error: name, message: error.message })
    await stream.close()
  } catch {
    stream.abort(error)
  }
}

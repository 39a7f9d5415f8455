/**
 * CACTUS client procedures (cactus/client/*.yaml) with subscriptions: the client listens for
 * notifications (mutual TLS) and subscribes to the lists and controls it polls; notifications
 * wake its poll. Each by its id, time compressed 60×.
 */
import { describe, expect } from 'vitest'
import { type CactusRun, cactusSuite } from './helpers/csip-client-harness.ts'

const NOTIFY = { notify_listen: '127.0.0.1:0' }
const delivered = (run: CactusRun) => {
  expect(run.server.notifications.length).toBeGreaterThan(0)
  expect(run.server.notifications.every((n) => n.status === 204)).toBe(true)
}

describe('CACTUS: subscriptions and notifications (2)', () => {
  cactusSuite([
    {
      id: 'GEN-06',
      title: 'active control – generation limit (subscribed)',
      config: NOTIFY,
      also: delivered,
    },
    { id: 'LOA-05', title: 'active control – import limit (subscribed)', config: NOTIFY, also: delivered },
    { id: 'LOA-06', title: 'active control – load limit (subscribed)', config: NOTIFY, also: delivered },
    { id: 'GEN-07', title: 'default controls – export limit (subscribed)', config: NOTIFY, also: delivered },
  ])
})

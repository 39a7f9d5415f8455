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

describe('CACTUS: subscriptions and notifications', () => {
  cactusSuite([
    {
      id: 'ALL-14',
      title: 'subscribe',
      config: NOTIFY,
      also: (run) => {
        delivered(run)
        const resources = run.server.subscriptions.map((s) => String(s.subscribedResource))
        expect(resources).toEqual(
          expect.arrayContaining([
            '/edev',
            '/edev/1/fsa',
            '/edev/1/fsa/1/derp',
            '/edev/1/derp/1/derc',
            '/edev/1/derp/1/dderc',
          ]),
        )
      },
    },
    {
      id: 'ALL-15',
      title: 'active controls – energize/de-energize (subscribed)',
      config: NOTIFY,
      also: delivered,
    },
    { id: 'ALL-16', title: 'active controls – disconnect (subscribed)', config: NOTIFY, also: delivered },
    { id: 'ALL-17', title: 'default controls – ramp rate (subscribed)', config: NOTIFY },
    { id: 'GEN-05', title: 'active control – export limit (subscribed)', config: NOTIFY, also: delivered },
  ])
})

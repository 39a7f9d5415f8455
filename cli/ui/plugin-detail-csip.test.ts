/** The CSIP-AUS plugin's view in `oe-node status` and the UI: each site's registration, control and post. */
import { expect, test } from 'vitest'
import type { PluginView } from './model.ts'
import { plainText, pluginDetailBody, pluginSummary } from './plugin-detail.ts'

const now = Date.parse('2026-12-05T10:00:00Z')
const status = {
  id: 'csip-aus',
  version: '0.1.0',
  state: 'running',
  ready: true,
  server: 'https://utility.example/dcap',
  mode: 'aggregator',
  connected: true,
  lastContact: new Date(now - 3_000).toISOString(),
  clockOffsetMs: -1_500,
  sites: {
    'site-1': {
      lfdi: 'AB01',
      registered: true,
      endDevice: '/edev/1',
      controls: { limit_export: { v: 500, u: 'W', until: now + 300_000, source: 'csip-aus:event:E1' } },
      lastPost: { at: now - 20_000, readings: 4 },
    },
    'site-2': { lfdi: 'AB02', registered: false, controls: {} },
  },
} as unknown as PluginView

test('each site shows its registration, the control in force with its end and source, and the last post', () => {
  const text = plainText(pluginDetailBody(status, now, 140), 140).join('\n')
  expect(text).toContain('https://utility.example/dcap (aggregator')
  expect(text).toContain('-1.5 s from ours')
  const site1 = text.split('\n').find((l) => l.includes('site-1'))!
  expect(site1).toContain('/edev/1')
  expect(site1).toMatch(/limit_export 500 W to \d\d:\d\d/)
  expect(site1).toMatch(/ 20s ago /)
  expect(site1).toContain('csip-aus:event:E1')
  const site2 = text.split('\n').find((l) => l.includes('site-2'))!
  expect(site2).toContain('not yet')
  expect(site2).toContain('never')
  expect(pluginSummary(status)).toBe('server up · 1/2 sites registered')
})

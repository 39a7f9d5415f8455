/**
 * A standby replica's plugin (issue 15): the VEN or CSIP-AUS client whose single-owner work runs
 * on another replica reports `role: 'standby'` and only its config. It shows as standing by,
 * not as a link that is down.
 */
import { expect, test } from 'vitest'
import type { PluginView } from './model.ts'
import { plainText, pluginDetailBody, pluginSummary, STANDBY_TEXT } from './plugin-detail.ts'

const now = Date.parse('2026-12-05T10:00:00Z')
const base = { version: '0.1.0', state: 'running', ready: true }

const text = (plugin: PluginView) => plainText(pluginDetailBody(plugin, now, 120), 120).join('\n')

test('a standby VEN says another replica runs it, never "VTN DOWN" or "unreachable"', () => {
  const standby = {
    ...base,
    id: 'openadr-ven',
    role: 'standby',
    vtn: 'https://vtn.example/openadr3/3.1.0',
    openadrVersion: '3.1.0',
    venName: 'site-7',
    resources: 2,
    notifications: { mode: 'poll', pollInterval: 300 },
  } as unknown as PluginView
  expect(pluginSummary(standby)).toBe(STANDBY_TEXT)
  const detail = text(standby)
  expect(detail).toContain('standby (another replica runs it)')
  expect(detail).toContain('https://vtn.example/openadr3/3.1.0 (OpenADR 3.1.0)')
  expect(detail).toContain('site-7')
  expect(detail).not.toMatch(/DOWN|unreachable|not yet/)
})

test('the active VEN still shows its link: up, or down when it has lost the VTN', () => {
  const active = {
    ...base,
    id: 'openadr-ven',
    role: 'active',
    vtn: 'https://vtn.example/openadr3/3.1.0',
    connected: false,
    lastError: 'connection refused',
    activeEvents: [],
  } as unknown as PluginView
  expect(pluginSummary(active)).toBe('VTN DOWN · 0 events')
  expect(text(active)).toContain('unreachable: connection refused')
  expect(pluginSummary({ ...active, connected: true } as PluginView)).toBe('VTN up · 0 events')
})

test('a standby CSIP-AUS client, and any other plugin that reports the role, show the same', () => {
  const csip = {
    ...base,
    id: 'csip-aus',
    role: 'standby',
    owner: 'replica-b',
    server: 'https://utility.example/dcap',
    mode: 'aggregator',
    sites: { 'site-1': { lfdi: 'AB01', registered: true, endDevice: '/edev/1' } },
  } as unknown as PluginView
  expect(pluginSummary(csip)).toBe(STANDBY_TEXT)
  const detail = text(csip)
  expect(detail).toContain('standby (another replica runs it) · owner replica-b')
  expect(detail).toContain('/edev/1')
  expect(detail).not.toMatch(/DOWN|unreachable|from ours/)

  const other = { ...base, id: 'some-poller', role: 'standby', target: 'x' } as unknown as PluginView
  expect(pluginSummary(other)).toBe(STANDBY_TEXT)
  const lines = text(other)
  expect(lines).toContain(STANDBY_TEXT)
  expect(lines).toContain('target')
  expect(lines).not.toMatch(/role/)
})

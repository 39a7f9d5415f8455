/**
 * Refused OCPP stations are logged, but a station hammering the door with a wrong password gets
 * one log line at once and one line with the count per minute, not a line per attempt. Run in a
 * node of its own, because the count of the last minute is written when the node stops.
 */
import { connect } from 'node:net'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { freePort } from '../../data-plane/index.ts'
import { cleanupAll, metricValue, type RunningNode, startNode } from '../helpers/node-process.ts'

let node: RunningNode
let port: number

beforeAll(async () => {
  port = await freePort()
  node = await startNode({
    config: `org = "Refusals"\n[plugins.ocpp]\nenabled = true\nlisten = "127.0.0.1:${port}"\n[plugins.ocpp.stations.CS1]\npassword = "the-right-one"\n`,
  })
})
afterAll(cleanupAll)

function upgradeStatus(station: string, password: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let buffered = ''
    socket.on('data', (chunk) => {
      buffered += chunk
      const match = /^HTTP\/1\.1 (\d{3})/.exec(buffered)
      if (match) {
        resolve(Number(match[1]))
        socket.destroy()
      }
    })
    socket.on('error', reject)
    socket.on('close', () => reject(new Error(`no status line: ${buffered}`)))
    socket.write(
      [
        `GET /ocpp/${station} HTTP/1.1`,
        `Host: 127.0.0.1:${port}`,
        'Upgrade: websocket',
        'Connection: Upgrade',
        'Sec-WebSocket-Version: 13',
        `Sec-WebSocket-Key: ${Buffer.from('0123456789abcdef').toString('base64')}`,
        'Sec-WebSocket-Protocol: ocpp1.6',
        `Authorization: Basic ${Buffer.from(`${station}:${password}`).toString('base64')}`,
        '',
        '',
      ].join('\r\n'),
    )
  })
}

/** The node's JSON log lines with this message. */
const logLines = (message: RegExp): Record<string, unknown>[] =>
  node
    .stderr()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((entry) => message.test(String(entry.msg)))

describe('refused stations in the log', () => {
  test('one line at once per station, then one line with the count, not a line per attempt', async () => {
    for (let i = 0; i < 5; i++) expect(await upgradeStatus('CS1', `wrong-${i}`)).toBe(401)
    for (let i = 0; i < 3; i++) expect(await upgradeStatus('NOBODY', 'x')).toBe(401)
    const metrics = await (await node.fetch('/metrics', { token: null })).text()
    expect(metricValue(metrics, 'oe_plugin_ocpp_connections_refused_total')).toBe(8)

    const first = logLines(/^station refused$/)
    expect(first.map((entry) => [entry.station, entry.reason, entry.level])).toEqual([
      ['CS1', 'wrong-password', 40],
      ['NOBODY', 'unknown', 40],
    ])
    expect(first[0]).toMatchObject({ remote: expect.stringContaining('127.0.0.1'), code: 401 })
    expect(JSON.stringify(first)).not.toContain('wrong-0')

    // The counts of the interval are written at the latest when the node stops.
    expect(await node.stop()).toBe(0)
    const counted = logLines(/^station refused \d+ more time/)
    expect(counted.map((entry) => [entry.station, entry.count, entry.reasons])).toEqual([
      ['CS1', 4, { 'wrong-password': 4 }],
      ['NOBODY', 2, { unknown: 2 }],
    ])
  })
})

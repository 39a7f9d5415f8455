/**
 * Health and metrics are open only on loopback (ARCHITECTURE §9, README): a node whose API
 * listens on every interface answers /livez, /readyz and /metrics without a token when asked
 * from 127.0.0.1, and only with a token when asked from another address — from a second "host"
 * (a network namespace joined to ours by a veth, 198.19.0.0/16), and from this host's own
 * non-loopback address. No traffic leaves the machine. Needs root and iproute2; elsewhere the
 * test fails saying why (it does not skip).
 */
import { execFile } from 'node:child_process'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { createLab, type NetnsLab, run } from './helpers/netns.ts'
import { BUN, cleanupAll, type RunningNode, startNode } from './helpers/node-process.ts'

const INGEST_TOKEN = 'ingest-token-loopback-0123456789'
const OPEN_PATHS = ['/livez', '/readyz', '/metrics'] as const

let lab: NetnsLab | undefined
let node: RunningNode
let port: number
/** This host's address on the veth to namespace `a` (not loopback). */
let hostAddress: string

beforeAll(async () => {
  lab = createLab('h')
  const inside = lab.hosts.a.managementAddress
  const route = run(['ip', '-4', '-o', 'route', 'get', inside])
  const source = /\bsrc (\d+\.\d+\.\d+\.\d+)/.exec(route.out)?.[1]
  if (!route.ok || !source) throw new Error(`no route to ${inside} from this namespace: ${route.out}`)
  hostAddress = source
  node = await startNode({
    config: `org = "Loopback"\n[api]\ningest_tokens = ["${INGEST_TOKEN}"]\n`,
    // The last --api wins: every interface, at a free port.
    args: ['--api', '0.0.0.0:0'],
  })
  port = Number(new URL(node.api).port)
  expect(port).toBeGreaterThan(0)
})

afterAll(async () => {
  await cleanupAll()
  lab?.destroy()
})

type Statuses = Record<string, Record<string, number>>

/** The tokens each path is asked with (none, a wrong one, an ingest token, the admin token). */
const tokens = (): Record<string, string> => ({
  none: '',
  wrong: 'not-a-token-of-this-node',
  ingest: INGEST_TOKEN,
  admin: node.token,
})

/** Ask every open path with every token; the answer statuses by path and token. */
async function statusesFrom(base: string): Promise<Statuses> {
  const result: Statuses = {}
  for (const path of OPEN_PATHS) {
    result[path] = {}
    for (const [name, token] of Object.entries(tokens())) {
      const response = await fetch(`${base}${path}`, {
        headers: token ? { authorization: `Bearer ${token}` } : {},
        signal: AbortSignal.timeout(10_000),
      })
      await response.arrayBuffer()
      result[path][name] = response.status
    }
  }
  return result
}

/** The same questions asked by a Bun process inside namespace `a`: from another host's address. */
function statusesFromNamespace(base: string): Promise<Statuses> {
  const script = `
    const paths = ${JSON.stringify(OPEN_PATHS)}
    const tokens = JSON.parse(process.env.OE_TEST_TOKENS)
    const result = {}
    for (const path of paths) {
      result[path] = {}
      for (const [name, token] of Object.entries(tokens)) {
        const response = await fetch(process.env.OE_TEST_BASE + path, {
          headers: token ? { authorization: 'Bearer ' + token } : {},
          signal: AbortSignal.timeout(10_000),
        })
        await response.arrayBuffer()
        result[path][name] = response.status
      }
    }
    console.log(JSON.stringify(result))
  `
  const [command, ...args] = lab!.exec('a', [BUN, '-e', script])
  return new Promise((resolve, reject) => {
    execFile(
      command!,
      args,
      {
        env: { ...process.env, OE_TEST_BASE: base, OE_TEST_TOKENS: JSON.stringify(tokens()) },
        timeout: 30_000,
      },
      (error, stdout, stderr) => {
        if (error) reject(new Error(`client in namespace ${lab!.hosts.a.ns}: ${error.message}\n${stderr}`))
        else resolve(JSON.parse(stdout) as Statuses)
      },
    )
  })
}

/** Every open path answers `none` and `wrong` with 401, and a token of the node with 200. */
const tokenRequired = Object.fromEntries(
  OPEN_PATHS.map((path) => [path, { none: 401, wrong: 401, ingest: 200, admin: 200 }]),
)

describe('health and metrics outside loopback', () => {
  test('from 127.0.0.1 they need no token; admin endpoints still do', async () => {
    const statuses = await statusesFrom(`http://127.0.0.1:${port}`)
    for (const path of OPEN_PATHS) expect(statuses[path]).toMatchObject({ none: 200, admin: 200 })
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
    expect(metrics).toMatch(/^oe_node_ready 1$/m)
    expect((await fetch(`http://127.0.0.1:${port}/v1/status`)).status).toBe(401)
  })

  test('from another host they need a token of the node (ingest or admin)', async () => {
    const statuses = await statusesFromNamespace(`http://${hostAddress}:${port}`)
    // 200 with a token: the client reached the API, so the 401s are the node's answer.
    expect(statuses).toEqual(tokenRequired)
  })

  test("from this host's own non-loopback address they need a token too", async () => {
    const statuses = await statusesFrom(`http://${hostAddress}:${port}`)
    expect(statuses).toEqual(tokenRequired)
    const denied = await fetch(`http://${hostAddress}:${port}/metrics`)
    expect(denied.status).toBe(401)
    const body = await denied.text()
    expect(JSON.parse(body)).toMatchObject({ error: 'Unauthorized' })
    expect(body).not.toContain('oe_node_ready')
  })
})

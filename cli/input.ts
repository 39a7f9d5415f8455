/** What commands read: the running node's API client, text from a file or stdin, repeated flags. */
import { readFile } from 'node:fs/promises'
import { NodeClient, resolveDataDir } from '../node/index.ts'
import type { GlobalOptions } from './output.ts'

/** The client for the node of `--data-dir` (else $OE_NODE_DATA_DIR, else the default). */
export function clientFor(globals: GlobalOptions): Promise<NodeClient> {
  return NodeClient.fromDataDir(resolveDataDir(globals.dataDir))
}

/** A file's text, or stdin's for `-`. */
export async function readTextInput(source: string): Promise<string> {
  if (source !== '-') return readFile(source, 'utf8')
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

/** Commander collector for a repeatable option. */
export const collect = (value: string, previous: string[] = []): string[] => [...previous, value]

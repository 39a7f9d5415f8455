#!/usr/bin/env bun
/** Entry point of the `oe-node` executable. */
import { runCli } from './program.ts'

const code = await runCli(process.argv.slice(2))
process.exit(code)

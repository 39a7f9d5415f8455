/**
 * cli: the `oe-node` command line (commander), one file per command, thin over the node API.
 *
 * @example
 * const code = await runCli(['--data-dir', dir, 'status', '--json'])
 */
export { createProgram, runCli } from './program.ts'

/**
 * The fault suite (test/faults): real nodes under a full disk, a shifted clock, a flapping or
 * slow link and a nats-server killed under load. It needs root (network namespaces, mounts) and
 * runs one test at a time: `npm run test:faults`.
 */
import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/faults/**/*.test.ts'],
    exclude: ['node_modules/**', 'dist/**'],
    testTimeout: 240_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 1,
    env: { CBOR_NATIVE_ACCELERATION_DISABLED: 'true' },
  },
})

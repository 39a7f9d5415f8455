import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['**/*.test.ts', '**/*.test.tsx'],
    // The fault suite runs on its own, one test at a time: npm run test:faults (vitest.faults.config.ts).
    exclude: ['node_modules/**', 'dist/**', 'test/faults/**'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Integration tests spawn nodes and nats-servers; two cores do not gain from more.
    maxWorkers: 2,
    // Tests that import cbor-x directly stay off its native extractor too (data-plane/cbor-setup.ts).
    env: { CBOR_NATIVE_ACCELERATION_DISABLED: 'true' },
  },
})

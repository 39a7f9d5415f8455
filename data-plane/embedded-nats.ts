/**
 * Path of a nats-server executable embedded in the compiled binary, or null when none was.
 * `scripts/build.ts` replaces this module at build time with a Bun file import of the
 * nats-server it finds, so the single executable runs on hosts that have none.
 */
export const embeddedNatsServerPath: string | null = null

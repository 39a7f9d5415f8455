/**
 * cbor-x loads the native string extractor `cbor-extract` when it can, and on Bun that addon
 * aborts or segfaults the process on non-ASCII strings (e.g. the unit '°C') and on bodies over
 * about 8 KB. One bad request would kill the node, so the pure-JS decoder is used everywhere.
 * This module must be evaluated before cbor-x: codec.ts imports it first.
 */
process.env.CBOR_NATIVE_ACCELERATION_DISABLED = 'true'

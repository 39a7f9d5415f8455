/**
 * Where the official protocol artefacts live: `test/testdata/`, a verbatim copy of
 * `shared/testdata/` (each folder with its SOURCE.md and licence), so the tests do not depend on
 * where the checkout sits.
 */
import { join } from 'node:path'

export const TESTDATA = join(import.meta.dirname, '..', 'testdata')

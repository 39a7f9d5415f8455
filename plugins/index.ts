/**
 * plugins: the plugin API (`plugins/api.ts`), the registry, and one folder per protocol plugin
 * (`ocpp/`, `openadr/`, `ocpi/`, `ieee2030-5/`, `simulator/`) (ARCHITECTURE §8). Plugins import
 * only `data-plane/`, never `federation/` or each other.
 *
 * Nothing is exported yet: the plugin API arrives with the Plugins I work.
 */
export {}

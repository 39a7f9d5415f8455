/**
 * federation: the libp2p host, peer directory and connection gating, sharing agreements
 * (model, canonical encoding, signatures, lifecycle, store), the policy engine, the transfer
 * protocol, provenance and the audit log (ARCHITECTURE §6, §7). It imports only `data-plane/`.
 *
 * Nothing is exported yet: peering and agreements arrive with the Federation I work.
 */
export {}

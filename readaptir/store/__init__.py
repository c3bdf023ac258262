"""Content-addressed artifacts (:mod:`readaptir.store.artifacts`) and input identities (:mod:`readaptir.store.identity`)."""

"""Training: knowledge adapters by next-token prediction (:mod:`~readaptir.train.knowledge`) over a token
cache (:mod:`~readaptir.train.tokens`), with seeded batch plans and resumable checkpoints."""

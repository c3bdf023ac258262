"""RE-Adapt: ``W = W_pre + α·Ψ + β·Δ`` — merge formulas (:mod:`~readaptir.readapt.merge`), shard I/O
(:mod:`~readaptir.readapt.weights`), the arithmetic (:mod:`~readaptir.readapt.arithmetic`) and models
built from it (:mod:`~readaptir.readapt.model`)."""

"""BeIR datasets (:mod:`readaptir.data.beir`) and knowledge-corpus subsets (:mod:`readaptir.data.subsets`)."""

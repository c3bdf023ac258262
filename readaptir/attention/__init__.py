"""Variable-length attention for packed, padding-free rows: the fused PyTorch kernel and its exact reference.

Several passages share one row of tokens; ``position_ids`` restart at 0 for each, and attention must stay
inside each passage. ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention over cumulative sequence
lengths, with backward; CUDA, torch ≥ 2.10) computes exactly that without materialising a mask;
:mod:`~readaptir.attention.kernels` adapts to the installed signature and provides the reference (one
causal SDPA call per passage) that runs everywhere else. :mod:`~readaptir.attention.interface` registers
it with transformers as the attention implementation ``readaptir_varlen``; :mod:`~readaptir.attention.packing`
builds packed rows and pools them. Depends on torch and transformers only (no config, no pydantic), so
GPU benchmarks import it on bare CUDA images.
"""

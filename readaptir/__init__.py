"""readaptir: RE-AdaptIR (Fleshman & Van Durme, 2024) as a Hydra-configured experiment framework.

A retriever fine-tuned from a pretrained LLM is rebuilt as ``W_pre + alpha·Ψ + beta·Δ``: Δ is the
retriever's own delta (the RE-adapter), Ψ a DoRA knowledge adapter trained by next-token prediction on
unlabeled passages of a target corpus. Entry point: ``python run.py`` (see README.md).
"""

__version__ = "0.1.0"

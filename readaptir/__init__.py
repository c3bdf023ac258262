"""readaptir: RE-AdaptIR (Fleshman & Van Durme, 2024) as a Hydra-configured experiment framework.

A retriever fine-tuned from a pretrained LLM is rebuilt as ``W_pre + alpha·Ψ + beta·Δ``: Δ is the
retriever's own delta (the RE-adapter), Ψ a DoRA knowledge adapter trained by next-token prediction on
unlabeled passages of a target corpus. The command line is ``python run.py`` (see README.md); the
Python API:

    readapt_weights(pretrained, retriever, knowledge_adapter, alpha=0.5)   # state dict of W
    build_readapted_model(...), save_readapted(out_dir, ...)               # as an AutoModel / a folder
    train_knowledge_adapter(pretrained, token_cache, recipe, settings, out_dir, work_dir)
    evaluate_hf_retriever(model, tokenizer, "data/scifact")                # BeIR metrics of any retriever
    evaluate_run(qrels, run), paired_test(per_query_a, per_query_b)

Layers, lowest first (a module imports only from its own layer or lower ones; tests/test_layers.py):
errors, runtime, fs → config, data, store, tracking → models → readapt, retrieval, evaluate → train,
harness → grid → report.
"""

from readaptir.evaluate import evaluate_run, paired_test
from readaptir.harness import evaluate_hf_retriever
from readaptir.readapt.arithmetic import readapt, readapt_weights
from readaptir.readapt.model import build_readapted_model, load_base_retriever, save_readapted
from readaptir.train.knowledge import train_knowledge_adapter

__version__ = "0.1.0"
__all__ = [
    "build_readapted_model",
    "evaluate_hf_retriever",
    "evaluate_run",
    "load_base_retriever",
    "paired_test",
    "readapt",
    "readapt_weights",
    "save_readapted",
    "train_knowledge_adapter",
]

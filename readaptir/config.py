"""The composed Hydra config as small typed, validated objects: built once at the edge, passed down.

``run.py`` composes a ``DictConfig``; :meth:`CellConfig.from_hydra` checks it in one pass before anything
loads (missing keys, types, ranges, choices) and turns it into frozen pydantic objects. Stages receive the
part they need (a :class:`TrainSettings`, a :class:`ModelSpec` ...), never the whole config. A bad value is
refused with one line naming the key, what it got and what is allowed:

    readaptir: error: config key train.batch_size=-1: must be ≥ 1
"""

# size: the schema of the whole config in one place, one small class per node; split, it would scatter it.

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from readaptir.errors import UserError, config_line

Ablation = Literal["both", "without", "with"]
# The Hydra configs shipped in the package (a source checkout's top-level conf/ links here).
CONF_DIR = Path(__file__).resolve().parent / "conf"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


_S = TypeVar("_S", bound=_Spec)


class ConfigError(UserError):
    """An incomplete or invalid config, refused before anything heavy runs."""


def typed(cls: type[_S], obj: Any) -> _S:
    """``obj`` as a ``cls`` (already one, or a mapping validated into one): for public functions that
    also accept plain dicts from notebooks and tests."""
    if isinstance(obj, cls):
        return obj
    try:
        return cls.model_validate(dict(obj))
    except ValidationError as e:
        raise ConfigError(config_line(e, obj)) from None


class RetrieverTraining(_Spec):
    """A retriever the pipeline trains from ``model.pretrained``: RepLLaMA's recipe, trained as Tevatron does.

    A PEFT LoRA over the bare ``AutoModel`` (FEATURE_EXTRACTION), the model's query/passage prompts, EOS
    pooling, InfoNCE at ``temperature`` over in-batch negatives plus ``group_size - 1`` BM25 hard negatives
    per query (within a micro-batch of ``queries_per_batch`` queries); ``grad_accum_steps`` micro-batches make
    one optimizer step; one epoch visits each ``split`` query once with one sampled positive.
    """

    dataset: str  # BeIR dataset (in paths.data_dir) whose `split` qrels and corpus train the retriever
    split: str = "train"
    r: int = Field(32, ge=1)
    alpha: float = Field(64, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    targets: tuple[str, ...] = Field(
        ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), min_length=1
    )
    temperature: float = Field(0.01, gt=0)
    group_size: int = Field(16, ge=1)
    queries_per_batch: int = Field(8, ge=1)  # a micro-batch: in-batch negatives come from its queries only
    grad_accum_steps: int = Field(16, ge=1)  # micro-batches per optimizer step: 8 × 16 = RepLLaMA's 128
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)  # used when warmup_steps = 0
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    epochs: int = Field(1, ge=1)
    query_max_len: int = Field(32, ge=3)
    passage_max_len: int = Field(196, ge=3)
    bm25_depth: int = Field(200, ge=1)
    seed: int = 42
    max_queries: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    checkpoint_every: int = Field(100, ge=0)
    log_every: int = Field(10, ge=1)
    evaluate_untrained: bool = True  # also evaluate the pretrained model with the same prompts, no LoRA

    def determining(self) -> dict[str, Any]:
        """What changes the trained retriever (not checkpointing, logging or the untrained comparison)."""
        return self.model_dump(exclude={"dataset", "checkpoint_every", "log_every", "evaluate_untrained"})


class ModelSpec(_Spec):
    """A retriever: a dense LLM (pretrained + retriever weights), or a baseline (BM25, sentence-transformers)."""

    name: str
    kind: Literal["dense", "lexical", "sbert"] = "dense"
    family: str | None = None
    pretrained: str | None = None
    retriever: str | None = None
    retriever_kind: Literal["lora", "full"] = "full"
    query_template: str = "{query}"
    passage_template: str = "{title} {text}"
    pooling: Literal["last_eos", "mean"] = "last_eos"
    normalize: bool = True
    query_max_len: int = Field(512, ge=3)
    passage_max_len: int = Field(512, ge=3)
    pad_token: Literal["eos", "unk"] = "eos"
    torch_dtype: Literal["bfloat16", "float16", "float32"] | None = None
    readapt: bool = True
    tiny: Literal["llama", "mistral"] | None = None
    train_retriever: RetrieverTraining | None = None  # set (and retriever null): the pipeline trains it
    # BM25 (kind: lexical)
    k1: float = Field(1.5, ge=0)
    b: float = Field(0.75, ge=0, le=1)
    method: str = "lucene"
    stemmer: str | None = None
    stopwords: str | None = None


class SubsetSpec(_Spec):
    """A NanoBEIR-style subset cut deterministically from a full dataset (:mod:`readaptir.data.nano`)."""

    of: str  # BeIR name of the full dataset in paths.data_dir
    queries: int = Field(30, ge=1)  # eval-split queries with a judged-relevant passage, sampled
    passages: int = Field(200, ge=1)  # their judged-relevant passages, then BM25 distractors
    relevant_per_query: int = Field(3, ge=1)
    seed: int = 13


class DatasetSpec(_Spec):
    name: str
    beir_name: str
    split: str
    corpus_size: int = Field(ge=0)
    # Shipped statistics for plan estimates (no data needed): tokens of title + " " + text, passages judged
    # relevant in the evaluated split (the size of ablation=with), and where the numbers come from.
    corpus_tokens: int | None = Field(None, ge=0)
    judged_passages: int | None = Field(None, ge=0)
    stats_source: str = ""
    knowledge_corpus: str
    task: str = ""
    seen_by: tuple[str, ...] = ()
    url: str | None = None
    builtin: bool = False
    # Metrics beyond BeIR's NDCG/MAP/Recall/P, e.g. [MRR@10] for MS-MARCO (its official measure).
    extra_metrics: tuple[str, ...] = ()
    subset: SubsetSpec | None = None  # built from another dataset into the cache instead of downloaded


class AdapterRecipe(_Spec):
    """The knowledge adapter: which corpus trains it and the PEFT recipe."""

    name: str = "custom"
    corpus: str = ""  # BeIR name of the training corpus (the grid's; free for direct API use)
    method: Literal["dora", "lora"] = "dora"
    r: int = Field(32, ge=1)
    alpha: float = Field(64, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    targets: tuple[str, ...] = Field(min_length=1)

    def determining(self) -> dict[str, Any]:
        """The recipe without its names (the corpus enters keys through its contents)."""
        return self.model_dump(exclude={"name", "corpus"})


class AblationSpec(_Spec):
    name: Ablation


class AlphaSelection(_Spec):
    """How ``readapt.alpha=auto`` picks α on withheld queries (see :mod:`readaptir.grid.alpha`)."""

    grid: tuple[float, ...] = Field((0.0, 0.25, 0.5, 0.75, 1.0), min_length=1)
    max_queries: int = Field(200, ge=1)
    folds: int = Field(5, ge=2)
    pool_depth: int = Field(100, ge=1)
    seed: int = 0

    def candidates(self) -> tuple[float, ...]:
        """The grid, sorted, with α = 0 (the retriever alone when β = 1) always among the candidates."""
        return tuple(sorted({0.0, *map(float, self.grid)}))


class ReadaptSettings(_Spec):
    # A number, or "auto": chosen per cell on withheld queries among alpha_selection.grid.
    alpha: float | Literal["auto"] = 0.5
    beta: float = 1.0
    knowledge_scaling: Literal["delta", "peft_scale"] = "delta"
    save_model: bool = False
    push_to_hub: str | None = None  # a Hub repo id: upload the readapted retriever (opt-in)
    alpha_selection: AlphaSelection = AlphaSelection()

    @property
    def auto(self) -> bool:
        return self.alpha == "auto"


class TrainSettings(_Spec):
    batching: Literal["paper", "packed"] = "paper"
    batch_size: int = Field(4, ge=1)
    max_tokens: int = Field(1024, ge=3)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    epochs: int = Field(1, ge=1)
    seed: int = 0
    max_grad_norm: float | None = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    max_passages: int | None = Field(None, ge=1)
    checkpoint_every: int = Field(500, ge=0)
    log_every: int = Field(10, ge=1)
    compile: bool = False  # torch.compile each decoder layer (fused kernels round differently: in the key)

    def determining(self) -> dict[str, Any]:
        """The settings that change the trained adapter (not how often it is saved or logged; gradient
        checkpointing gives the same numbers with less memory)."""
        return self.model_dump(exclude={"checkpoint_every", "log_every", "gradient_checkpointing"})


class EncodeSettings(_Spec):
    token_budget: int = Field(65536, ge=1)
    max_batch_size: int = Field(256, ge=1)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"


class SearchSettings(_Spec):
    top_k: int = Field(1000, ge=1)
    backend: Literal["auto", "faiss", "stream"] = "auto"
    faiss_max_gb: float = Field(32, gt=0)
    chunk_size: int = Field(262144, ge=1)


class EvaluateSettings(_Spec):
    k_values: tuple[int, ...] = Field((1, 3, 5, 10, 100, 1000), min_length=1)


class TrackingSettings(_Spec):
    backend: Literal["auto", "wandb", "none"] = "auto"
    project: str = "readaptir"
    entity: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    dir: str | None = None


class Paths(_Spec):
    data_dir: str
    cache_dir: str
    results_dir: str


class RunSettings(_Spec):
    plan: bool = False
    seed: int = 0
    progress_every_s: float = Field(300, ge=0)  # progress lines in run.log during long stages (0: none)
    out_dir: str | None = None
    # all: the whole cell; adapters: only its token cache and knowledge adapter; base: only the base
    # retriever's index and run (shared products built first, as their own stage, on a cluster).
    stage: Literal["all", "adapters", "base"] = "all"
    # A product this cell needs is being built by another live job: wait for it, or exit at once with
    # status "waiting" (cluster jobs: no GPU idles on another job's build).
    on_busy: Literal["wait", "exit"] = "wait"


class StoreSettings(_Spec):
    """What reuse verifies (README "What is verified on reuse") and when a build lock counts as stale."""

    verify: Literal["auto", "full", "sampled"] = "auto"
    full_check_max_gb: float = Field(4.0, ge=0)
    lock_stale_s: float = Field(600.0, gt=0)


class CellConfig(_Spec):
    """One cell of the grid: model × dataset × adapter × ablation, and every setting of its stages."""

    model: ModelSpec
    dataset: DatasetSpec
    adapter: AdapterRecipe
    ablation: AblationSpec
    readapt: ReadaptSettings
    train: TrainSettings
    encode: EncodeSettings
    search: SearchSettings
    evaluate: EvaluateSettings
    tracking: TrackingSettings
    paths: Paths
    run: RunSettings
    store: StoreSettings = StoreSettings()
    estimates: dict[str, Any] = {}

    @classmethod
    def from_hydra(cls, cfg: Any) -> CellConfig:
        """Validate a composed config (``DictConfig`` or plain dict); one :class:`ConfigError` line if bad."""
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            missing = sorted(OmegaConf.missing_keys(cfg))
            if missing:
                raise ConfigError(
                    f"config keys without a value: {', '.join(missing)}; set them on the command line "
                    f"(e.g. {missing[0]}=...)"
                )
            cfg = OmegaConf.to_container(cfg, resolve=True)
        try:
            spec = cls.model_validate(cfg)
        except ValidationError as e:
            raise ConfigError(config_line(e, cfg)) from None
        check_paths(spec.paths, writing=not spec.run.plan)
        return spec


def check_paths(paths: Paths, writing: bool = True) -> None:
    """Refuse folders that cannot work before anything loads: a data_dir that is a file, and (unless only
    planning) a cache_dir or results_dir that cannot be created or written."""
    import os
    from pathlib import Path

    data = Path(paths.data_dir).expanduser()
    if data.exists() and not data.is_dir():
        raise ConfigError(f"config key paths.data_dir={paths.data_dir!r}: not a folder; point it at the folder "
                          "holding the BeIR datasets (or set READAPTIR_DATA)")  # fmt: skip
    for key in ("cache_dir", "results_dir") if writing else ():
        value = getattr(paths, key)
        folder = Path(value).expanduser().absolute()
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"config key paths.{key}={value!r}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"config key paths.{key}={value!r}: {existing} is not writable; make it "
                              f"writable or set paths.{key} to a folder you can write")  # fmt: skip

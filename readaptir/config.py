"""The composed Hydra config as small typed, validated objects: built once at the edge, passed down.

``run.py`` composes a ``DictConfig``; :meth:`CellConfig.from_hydra` checks it in one pass before anything
loads (missing keys, types, ranges, choices) and turns it into frozen pydantic objects. Stages receive the
part they need (a :class:`TrainSettings`, a :class:`ModelSpec` ...), never the whole config. A bad value is
refused with one line naming the key, what it got and what is allowed:

    readaptir: error: config key train.batch_size=-1: must be ≥ 1
"""

# size: the schema of the whole config in one place, one small class per node; split, it would scatter it.

from __future__ import annotations

import math
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from readaptir.errors import UserError, config_line
from readaptir.paths import name_problem

Ablation = Literal["both", "without", "with"]
# The Hydra configs shipped in the package (a source checkout's top-level conf/ links here).
CONF_DIR = Path(__file__).resolve().parent / "conf"


class _Spec(BaseModel):
    # allow_inf_nan=False: every float in the config is finite (α=nan would poison every weight it touches)
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``true``/``false`` where a number belongs is refused (pydantic would read them as 1 and 0:
        ``readapt.alpha=true`` ran α = 1, ``train.batch_size=true`` a batch of 1)."""
        field = cls.model_fields.get(info.field_name or "")
        values = value if isinstance(value, list | tuple) else (value,)
        if (
            field is not None
            and "bool" not in repr(field.annotation)
            and any(isinstance(v, bool) for v in values)
        ):
            raise _refuse("true/false is not a number here; give a number")
        return value


def _refuse(problem: str) -> PydanticCustomError:
    return PydanticCustomError("readaptir", "{problem}", {"problem": problem})


def _name(value: str) -> str:
    """A name that becomes a folder (readaptir.paths.NAME_PATTERN)."""
    problem = name_problem(value)
    if problem is not None:
        raise _refuse(problem)
    return value


def _template(required: str, allowed: frozenset[str]):
    """A str.format template whose fields are plain names among ``allowed``, ``required`` among them: no
    positional fields (``{}``, ``{0}``), no attribute or index access (``{query.__class__}``), no
    conversions or format specs."""

    def check(value: str) -> str:
        try:
            fields = [(f, c, s) for _, f, s, c in string.Formatter().parse(value) if f is not None]
        except ValueError as e:
            raise _refuse(f"not a valid template ({e}); write literal braces as {{{{ and }}}}") from None
        names = {f for f, _, _ in fields}
        bad = [
            f + (f"!{c}" if c else "") + (f":{s}" if s else "")
            for f, c, s in fields
            if f not in allowed or c or s
        ]
        if bad or required not in names:
            what = f"field {{{bad[0]}}} is not allowed" if bad else f"has no {{{required}}}"
            raise _refuse(f"{what}; use plain fields among {{{'}, {'.join(sorted(allowed))}}} (no conversion, "
                          f"format spec, attribute or index) with {{{required}}} once or more")  # fmt: skip
        return value

    return check


# A Hub pin's revision: a branch, tag or commit (letters, digits, '._-'), no '..', not ending in '.' or '.lock'.
_REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")


def revision_problem(ref: str) -> str | None:
    """Why ``ref`` (``org/name@<revision>``, not an existing local path) is not a valid Hub pin, or None."""
    if "@" not in ref or ref.startswith(("/", ".", "~", "gguf:")) or Path(ref).expanduser().exists():
        return None
    repo, _, rev = ref.partition("@")
    if repo.count("/") != 1 or any(name_problem(p) for p in repo.split("/")):
        return "a Hub pin is org/name@<revision>; the part before '@' is not org/name"
    if not _REVISION.fullmatch(rev) or ".." in rev or rev.endswith((".", ".lock")):
        return (f"revision {rev!r} is not a branch, tag or commit (letters, digits, '._-', not empty, "
                "no '..'); pin a commit hash, e.g. org/name@<40 hex digits>")  # fmt: skip
    return None


def _model_ref(value: str | None) -> str | None:
    problem = None if value is None else revision_problem(value)
    if problem is not None:
        raise _refuse(problem)
    return value


def _extra_metric(value: str) -> str:
    """An extra measure at one cutoff: ``MRR@<k ≥ 1>`` (checked here, not after the corpus is encoded)."""
    if re.fullmatch(r"(?i)mrr@[1-9][0-9]*", value) is None:
        raise _refuse("not a measure like MRR@10 (MRR at a cutoff ≥ 1)")
    return value


def _corpus_name(value: str) -> str:
    return value if value == "" else _name(value)


def _finite_or_auto(value: Any) -> Any:
    """α: ``auto`` or a finite number (one clear line for ``nan``, not the union's two messages)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    if not math.isfinite(number) or abs(number) > SCALE_MAX:
        raise _refuse(f"must be auto or a finite number in [-{SCALE_MAX:g}, {SCALE_MAX:g}]")
    return value


# |α|, |β| beyond this only overflow the readapted weights (the paper scales by 0 … 1); it also keeps their
# text in the cell folder name plain (1e+06 would not be a valid name).
SCALE_MAX = 1000.0
Scale = Annotated[float, Field(ge=-SCALE_MAX, le=SCALE_MAX)]
Name = Annotated[str, AfterValidator(_name)]
ModelRef = Annotated[str | None, AfterValidator(_model_ref)]
QueryTemplate = Annotated[str, AfterValidator(_template("query", frozenset({"query", "task"})))]
PassageTemplate = Annotated[str, AfterValidator(_template("text", frozenset({"title", "text"})))]
# numpy seeds must fit 32 bits; negative seeds are refused by random.Random's peers and mean nothing.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


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

    dataset: Name  # BeIR dataset (in paths.data_dir) whose `split` qrels and corpus train the retriever
    split: Name = "train"
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
    seed: Seed = 42
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

    name: Name
    kind: Literal["dense", "lexical", "sbert"] = "dense"
    family: str | None = None
    pretrained: ModelRef = None  # a local folder, gguf:<package>/<file>, or a Hub id (org/name[@revision])
    retriever: ModelRef = None
    retriever_kind: Literal["lora", "full"] = "full"
    query_template: QueryTemplate = "{query}"  # fields: {query} (required), {task}
    passage_template: PassageTemplate = "{title} {text}"  # fields: {text} (required), {title}
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

    of: Name  # BeIR name of the full dataset in paths.data_dir
    queries: int = Field(30, ge=1)  # eval-split queries with a judged-relevant passage, sampled
    passages: int = Field(200, ge=1)  # their judged-relevant passages, then BM25 distractors
    relevant_per_query: int = Field(3, ge=1)
    seed: Seed = 13


class DatasetSpec(_Spec):
    name: Name
    beir_name: Name
    split: Name
    corpus_size: int = Field(ge=0)
    # Shipped statistics for plan estimates (no data needed): tokens of title + " " + text, passages judged
    # relevant in the evaluated split (the size of ablation=with), and where the numbers come from.
    corpus_tokens: int | None = Field(None, ge=0)
    judged_passages: int | None = Field(None, ge=0)
    stats_source: str = ""
    knowledge_corpus: Name
    task: str = ""
    seen_by: tuple[str, ...] = ()
    url: str | None = None
    # Where a dataset missing from paths.data_dir comes from (readaptir.data.fetch); never enters a key.
    source: Literal["auto", "hub", "zip", "local"] = "auto"
    builtin: bool = False
    # Metrics beyond BeIR's NDCG/MAP/Recall/P, e.g. [MRR@10] for MS-MARCO (its official measure).
    extra_metrics: tuple[Annotated[str, AfterValidator(_extra_metric)], ...] = ()
    subset: SubsetSpec | None = None  # built from another dataset into the cache instead of downloaded


class AdapterRecipe(_Spec):
    """The knowledge adapter: which corpus trains it and the PEFT recipe."""

    name: Name = "custom"
    corpus: Annotated[str, AfterValidator(_corpus_name)] = (
        ""  # BeIR name of the training corpus (the grid's; free for direct API use)
    )
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

    grid: tuple[Scale, ...] = Field((0.0, 0.25, 0.5, 0.75, 1.0), min_length=1)
    max_queries: int = Field(200, ge=1)
    folds: int = Field(5, ge=2)
    pool_depth: int = Field(100, ge=1)
    sample_size: int = Field(10000, ge=0)  # corpus sample that estimates ranks outside the pool
    seed: Seed = 0

    def candidates(self) -> tuple[float, ...]:
        """The grid, sorted, with α = 0 (the retriever alone when β = 1 and knowledge_scaling=delta) always among the candidates."""
        return tuple(sorted({0.0, *map(float, self.grid)}))


class ReadaptSettings(_Spec):
    # A number, or "auto": chosen per cell on withheld queries among alpha_selection.grid.
    alpha: Annotated[float | Literal["auto"], BeforeValidator(_finite_or_auto)] = 0.5
    beta: Scale = 1.0
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
    seed: Seed = 0
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
    k_values: tuple[Annotated[int, Field(ge=1)], ...] = Field((1, 3, 5, 10, 100, 1000), min_length=1)


class TrackingSettings(_Spec):
    backend: Literal["auto", "wandb", "none"] = "auto"
    project: str = "readaptir"
    entity: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    dir: str | None = None


_ENV = {"data_dir": "READAPTIR_DATA", "cache_dir": "READAPTIR_CACHE", "results_dir": "READAPTIR_CACHE"}


class Paths(_Spec):
    """The three roots; an empty one is refused (an empty READAPTIR_CACHE made the store ``/results``)."""

    data_dir: str
    cache_dir: str
    results_dir: str

    @field_validator("data_dir", "cache_dir", "results_dir")
    @classmethod
    def _not_empty(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise _refuse(f"empty; set it to a folder (an environment variable {_ENV[info.field_name]} that is "
                          "set but empty gives this: unset it or set it to a folder)")  # fmt: skip
        return value


class RunSettings(_Spec):
    plan: bool = False
    seed: Seed = 0
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
        sub = spec.dataset.subset
        # A subset's record reports corpus_size: it must be the size of the corpus actually searched.
        if sub is not None and spec.dataset.corpus_size != sub.passages:
            raise ConfigError(f"config key dataset.corpus_size={spec.dataset.corpus_size}: a subset holds "
                              f"dataset.subset.passages={sub.passages} passages; set both to the same number")  # fmt: skip
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

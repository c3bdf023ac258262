"""``readaptir adapt``: your retriever readapted on your corpus, no queries or judgments needed.

    readaptir adapt retriever=castorini/repllama-v1-7b-lora-passage corpus=my_docs/ out=my-readapted
    readaptir adapt retriever=intfloat/e5-mistral-7b-instruct pretrained=mistralai/Mistral-7B-v0.1 \\
        model=e5-mistral corpus=hf:my-org/my-corpus corpus_fields.text=body

The corpus becomes a BeIR ``corpus.jsonl`` in the cache (:mod:`readaptir.data.corpus`; a BeIR folder is
used as it is, so its products are the grid's own), then the grid's own stages and keys run: token cache →
knowledge adapter → ``W_pre + α·Ψ + β·Δ`` (α = 0.5 by default, the paper's) → a sentence-transformers
folder (:mod:`readaptir.readapt.export`) with the model card. Everything is a cached product, so a second
run, or a killed one run again, rebuilds nothing that is finished; ``run.plan=true`` says what would be
built. The prompts and lengths come from the ``model`` group (RepLLaMA's by default; ``model=e5-mistral``
for e5's, with ``task=...``). The pretrained base is the one a PEFT retriever records
(``base_model_name_or_path``); a full-weight retriever needs ``pretrained=``. A pair that does not share
architecture and tensor shapes is refused before anything is trained.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash
from pydantic import ValidationError

from readaptir.config import CellConfig, ConfigError, DatasetSpec, _Spec
from readaptir.data.corpus import HF_PREFIX, CorpusFields, write_corpus
from readaptir.data.subsets import knowledge_subset
from readaptir.errors import UserError, config_line
from readaptir.fs import temp_sibling
from readaptir.grid import stages
from readaptir.grid.cell import open_store
from readaptir.grid.keys import CellInputs, cell_products, identity_dir, resolve
from readaptir.logs import ProgressLog
from readaptir.models.hub import ModelFolders, hub_id, resolve_model_dir
from readaptir.readapt.export import save_sentence_transformers, st_prompts
from readaptir.readapt.pair import base_of, check_pair, plan_models
from readaptir.readapt.weights import is_adapter_folder
from readaptir.runtime import Runtime
from readaptir.store.artifacts import ArtifactStore, make_key
from readaptir.store.identity import content_identity
from readaptir.tracking import start_tracker

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # bump when the exported folder's layout changes
ADAPT_KEYS = ("retriever", "pretrained", "corpus", "corpus_fields", "out", "task")


class AdaptSettings(_Spec):
    """The command's own keys (the rest of the config is the grid's: adapter, train, readapt, paths ...)."""

    retriever: str
    corpus: str
    pretrained: str | None = None
    out: str | None = None
    task: str = ""  # the e5 query instruction ({task} in model.query_template)
    corpus_fields: dict[str, Any] = {}

    def fields(self) -> CorpusFields:
        try:
            return CorpusFields(**self.corpus_fields)
        except ValueError as e:  # a known key with a bad value: the message names it
            raise ConfigError(f"config key {e}") from None
        except TypeError as e:
            raise ConfigError(f"config key corpus_fields: {e}; known: text, title, id, split, min_chars, "
                              "max_chars, dedup") from None  # fmt: skip


def split_config(container: dict[str, Any]) -> tuple[AdaptSettings, CellConfig]:
    """The command's keys and a grid config (its dataset is replaced by the corpus later)."""
    own = {k: container.pop(k) for k in ADAPT_KEYS if k in container}
    try:
        settings = AdaptSettings.model_validate(own)
    except ValidationError as e:
        raise ConfigError(config_line(e, own)) from None
    cfg = CellConfig.from_hydra(container)
    settings.fields()  # bad corpus_fields.* and out= refused before any model is resolved or downloaded
    check_out(settings.out, cfg.paths.cache_dir)
    return settings, cfg


def corpus_identity(source: str, fields: CorpusFields, memo: Path) -> str:
    """What determines the prepared corpus: the source's contents (a ``hf:`` dataset: its name)."""
    if source.startswith(HF_PREFIX):
        return source
    path = Path(source).expanduser()
    if path.is_file():
        return content_identity(path, memo)
    h = xxhash.xxh3_128()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(p.relative_to(path).as_posix().encode() + b"\0" + content_identity(p, memo).encode() + b"\0")
    return f"xxh3:{h.hexdigest()}"


def prepare_corpus(
    settings: AdaptSettings, store: ArtifactStore, memo: Path, plan: bool = False
) -> tuple[Path, dict[str, Any]]:
    """The corpus folder the stages read and its counts: a BeIR folder as it is, anything else converted
    (in plan mode only when already converted: a plan writes nothing)."""
    source = Path(settings.corpus).expanduser()
    if not settings.corpus.startswith(HF_PREFIX) and (source / "corpus.jsonl").is_file():
        from readaptir.data.checks import check_corpus

        check_corpus(source.resolve(), memo)  # the grid's own checks: non-empty, unique ids
        return source.resolve(), {"source": "BeIR folder, used as it is"}
    fields = settings.fields()
    key = make_key("corpus", {"source": corpus_identity(settings.corpus, fields, memo),
                              "fields": fields.__dict__, "version": 1})  # fmt: skip
    if plan and not store.valid(key):
        return store.path(key), {"source": "not read yet (plan mode): converted on the first run"}
    path = store.build("corpus", key, lambda tmp: write_corpus(settings.corpus, fields, tmp))
    return path, json.loads((path / "counts.json").read_text())


def corpus_label(source: str) -> str:
    name = (
        source[len(HF_PREFIX) :] if source.startswith(HF_PREFIX) else Path(source).expanduser().resolve().name
    )
    name = name.replace("/", "__").removesuffix(".jsonl")
    # The label names the dataset and its folders: "my docs (v2)" or "hf:org/ds:cfg" would be refused there.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".")[:128] or "corpus"


def cell_for(
    cfg: CellConfig, s: AdaptSettings, pretrained: str, kind: str, label: str, size: int
) -> CellConfig:
    """The grid cell the command is: this model pair, the corpus as dataset and knowledge corpus, ablation both."""
    name = Path(s.retriever.rstrip("/")).name or "retriever"
    model = cfg.model.model_copy(update=dict(name=name, pretrained=pretrained, retriever=s.retriever, tiny=None,
                                             retriever_kind=kind, train_retriever=None, readapt=True))  # fmt: skip
    dataset = DatasetSpec(name=label, beir_name=label, split="test", corpus_size=size, knowledge_corpus=label,
                          task=s.task)  # fmt: skip
    return cfg.model_copy(update=dict(model=model, dataset=dataset, adapter=cfg.adapter.model_copy(
        update={"corpus": label}), ablation=cfg.ablation.model_copy(update={"name": "both"})))  # fmt: skip


@dataclass
class AdaptJob:
    """Everything the command decided before anything loads: the cell, its inputs, folders and keys."""

    settings: AdaptSettings
    cfg: CellConfig
    inputs: CellInputs
    folders: ModelFolders
    runtime: Runtime
    products: dict[str, Any]
    keys: dict[str, str]
    prompts: dict[str, str]
    max_len: int
    counts: dict[str, Any]


def prepare(container: dict[str, Any]) -> AdaptJob:
    """Resolve the models (base found or given, pair checked), prepare the corpus, compute every key."""
    settings, cfg = split_config(container)
    cache = cfg.paths.cache_dir
    if cfg.run.plan:  # a plan downloads no weights: a Hub retriever's PEFT config alone names its base
        pretrained, kind = plan_models(settings.retriever, settings.pretrained)
        folders = ModelFolders(Path(pretrained), Path(settings.retriever))
    else:
        ret_dir = resolve_model_dir(settings.retriever, cache)
        pretrained = base_of(ret_dir, settings.pretrained)
        pre_dir = resolve_model_dir(pretrained, cache)
        check_pair(pre_dir, ret_dir)
        kind = "lora" if is_adapter_folder(ret_dir) else "full"
        folders = ModelFolders(pre_dir, ret_dir)
    root, counts = prepare_corpus(settings, ArtifactStore(cache), identity_dir(cfg), cfg.run.plan)
    corpus_file = root / "corpus.jsonl"
    size = counts.get("kept") or (sum(1 for _ in open(corpus_file, "rb")) if corpus_file.is_file() else 0)
    label = corpus_label(settings.corpus)
    cfg = cell_for(cfg, settings, pretrained, kind, label, size)
    inputs = CellInputs(root, root, knowledge_subset(label, "both", label, label, "test"))
    runtime = Runtime.detect(cfg.encode.dtype, cfg.model.torch_dtype)
    products = cell_products(cfg, runtime, inputs)
    keys = resolve(products)
    m = cfg.model
    prompts = st_prompts(m.query_template, m.passage_template, settings.task)
    max_len = max(m.query_max_len, m.passage_max_len)
    keys["export"] = make_key("export", {"format": "sentence-transformers", "prompts": prompts,
                                         "max_seq_length": max_len, "version": EXPORT_VERSION}, [keys["readapted"]])  # fmt: skip
    return AdaptJob(settings, cfg, inputs, folders, runtime, products, keys, prompts,
                    max_len, counts)  # fmt: skip


def run_adapt(container: dict[str, Any]) -> Path | None:
    """Run (or plan) the command on a resolved config; returns the sentence-transformers folder."""
    job = prepare(container)
    with ProgressLog(job.cfg.run.progress_every_s):  # run.log shows progress during long stages
        return _run(job)


def _run(job: AdaptJob) -> Path | None:
    cfg, keys, m, label = job.cfg, job.keys, job.cfg.model, job.cfg.adapter.corpus
    print(f"corpus {job.settings.corpus}: {_counts_line(job.counts)} -> {job.inputs.knowledge_root}")
    if cfg.run.plan:
        store = ArtifactStore(cfg.paths.cache_dir)
        for name in ("tokens", "adapter", "readapted", "export"):
            state = "reuse" if store.valid(keys[name]) else "build"
            print(f"  {name:<10} {state:<6} {store.path(keys[name])}")
        return None
    store = open_store(cfg, job.products, keys)
    tracker = start_tracker(cfg.tracking if job.runtime.main else None, {"command": "adapt", **cfg.model_dump()},
                            name=f"{m.name}/{label}/adapt", group=f"{m.name}/adapt", job_type="adapt")  # fmt: skip
    try:
        adapter, stats = stages.train_adapter(cfg, store, keys, job.inputs, job.folders.pretrained, tracker)
    finally:
        tracker.finish()

    def export(tmp: Path) -> None:
        from readaptir.readapt.card import retriever_card
        from readaptir.retrieval.dense import load_tokenizer

        model = stages.readapt(cfg, store, keys["readapted"], job.folders, adapter, job.runtime)
        card = retriever_card(
            m, cfg.readapt, cfg.adapter, cfg.train, label, "both", stats, None, hub_id(m.pretrained)
        )
        tokenizer = load_tokenizer(job.folders.retriever, job.folders.pretrained)
        save_sentence_transformers(model, tokenizer, tmp / "model", job.prompts, job.max_len, card)

    folder = store.build("export", keys["export"], export) / "model"
    if job.settings.out:
        folder = copy_out(folder, Path(job.settings.out))
    print(f"knowledge adapter: {adapter}\nreadapted retriever (sentence-transformers): {folder}\n"
          f'  SentenceTransformer("{folder}").encode_query([...]) / .encode_document([...])')  # fmt: skip
    if cfg.readapt.push_to_hub:
        print(f"pushed to {push_folder(folder, str(cfg.readapt.push_to_hub))}")
    return folder


def _counts_line(counts: dict[str, Any]) -> str:
    if "kept" not in counts:
        return str(counts.get("source", ""))
    return (f"{counts['kept']:,} passages kept of {counts['read']:,} read ({counts['empty']:,} empty, "
            f"{counts['too_short']:,} too short, {counts['too_long']:,} too long, "
            f"{counts['duplicates']:,} duplicates dropped)")  # fmt: skip


def check_out(out: str | os.PathLike | None, cache: str | os.PathLike | None = None) -> None:
    """``out=`` may be new, an empty folder or an earlier export (it is replaced whole): never a file, a
    folder of other files (it would be deleted), or a path inside the cache or holding it."""
    if not out:
        return
    path = Path(out).expanduser().resolve()
    if cache is not None:
        root = Path(cache).expanduser().resolve()
        if path == root or root in path.parents or path in root.parents:
            raise ConfigError(f"config key out={out}: {path} is inside or holds the cache {root}; "
                              "name a folder outside it")  # fmt: skip
    if path.exists() and not (
        path.is_dir() and (not any(path.iterdir()) or (path / "modules.json").is_file())
    ):
        raise ConfigError(f"config key out={out}: {path} exists and is not an earlier export (no modules.json), "
                          "so replacing it would delete it; name a new folder or remove that one")  # fmt: skip


def copy_out(folder: Path, out: Path) -> Path:
    """The product copied to ``out`` (replaced whole, never half-written)."""
    check_out(out)
    out = out.expanduser().resolve()
    tmp = temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def push_folder(folder: Path, repo: str) -> str:
    """Upload the folder to the Hub repo ``repo`` (created private when new): opt-in, readapt.push_to_hub."""
    from huggingface_hub import HfApi

    from readaptir.models.hub import LOGIN_HINT

    try:
        api = HfApi()
        api.create_repo(repo, private=True, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="readaptir adapt")
    except Exception as e:  # noqa: BLE001 - hub errors come in many classes; all mean the same here
        raise UserError(f"readapt.push_to_hub={repo}: upload failed ({e.__class__.__name__}: {e}); "
                        f"{LOGIN_HINT}; the folder is at {folder}") from e  # fmt: skip
    return f"https://huggingface.co/{repo}"

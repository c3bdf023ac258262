"""Every config group option and experiment composes; the dataset group is exactly the paper's 14."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from readaptir.config import CellConfig, ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
PAPER_DATASETS = {
    "msmarco",
    "fever",
    "climate-fever",
    "hotpotqa",
    "dbpedia-entity",
    "nq",
    "quora",
    "webis-touche2020",
    "trec-covid",
    "fiqa",
    "scidocs",
    "arguana",
    "scifact",
    "nfcorpus",
}
PAPER_TASKS = {
    "msmarco": "Given a web search query, retrieve relevant passages that answer the query",
    "arguana": "Given a claim, find documents that refute the claim",
    "climate-fever": "Given a claim about climate change, retrieve documents that support or refute the claim",
    "dbpedia-entity": "Given a query, retrieve relevant entity descriptions from DBPedia",
    "fever": "Given a claim, retrieve documents that support or refute the claim",
    "fiqa": "Given a financial question, retrieve user replies that best answer the question",
    "hotpotqa": "Given a multi-hop question, retrieve documents that can help answer the question",
    "nfcorpus": "Given a question, retrieve relevant documents that best answer the question",
    "nq": "Given a question, retrieve Wikipedia passages that answer the question",
    "quora": "Given a question, retrieve questions that are semantically equivalent to the given question",
    "scidocs": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "webis-touche2020": "Given a question, retrieve detailed and persuasive arguments that answer the question",
    "trec-covid": "Given a query on COVID-19, retrieve documents that answer the query",
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def hydra_ctx():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def _compose(overrides):
    cfg = compose(config_name="config", overrides=overrides)
    OmegaConf.resolve(cfg)
    assert not OmegaConf.missing_keys(cfg), OmegaConf.missing_keys(cfg)
    return cfg


def test_dataset_group_is_exactly_the_paper_14(hydra_ctx):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    # What Hydra's glob(*) expands to for the group.
    assert set(loader.get_group_options("dataset")) == PAPER_DATASETS
    assert set(options("dataset")) == PAPER_DATASETS


@pytest.mark.parametrize("name", sorted(PAPER_DATASETS))
def test_dataset_configs(hydra_ctx, name):
    cfg = _compose([f"dataset={name}", "model=e5-mistral"])
    d = cfg.dataset
    assert d.name == d.beir_name == name
    assert d.task == PAPER_TASKS[name]
    assert d.split == ("dev" if name == "msmarco" else "test")
    assert d.corpus_size > 3000
    assert set(d.seen_by) <= {"repllama", "e5-mistral", "minilm", "smollm2"}  # smollm2 trains on NFCorpus
    assert d.knowledge_corpus == ("fever" if name == "climate-fever" else name)


def test_zero_shot_sets_match_spec(hydra_ctx):
    seen = {n: set(OmegaConf.load(CONF / "dataset" / f"{n}.yaml").seen_by) for n in PAPER_DATASETS}
    assert {n for n, s in seen.items() if "repllama" in s} == {"msmarco"}
    assert {n for n, s in seen.items() if "e5-mistral" in s} == {
        "msmarco",
        "fever",
        "hotpotqa",
        "nq",
        "quora",
    }
    # all-MiniLM-L6-v2 (a baseline) trained on MS MARCO, NQ and Quora duplicates among its pairs.
    assert {n for n, s in seen.items() if "minilm" in s} == {"msmarco", "nq", "quora"}


@pytest.mark.parametrize(
    "model,dataset,adapter,ablation",
    list(
        itertools.product(
            options("model"), ["scifact", "msmarco", "demo/toy"], options("adapter"), options("ablation")
        )
    ),
)
def test_every_group_option_composes(hydra_ctx, model, dataset, adapter, ablation):
    cfg = _compose([f"model={model}", f"dataset={dataset}", f"adapter={adapter}", f"ablation={ablation}"])
    assert cfg.model.name == model
    assert cfg.adapter.name == adapter and cfg.ablation.name == ablation
    typed = CellConfig.from_hydra(cfg)  # every option passes the validation run.py applies
    assert typed.model.kind == {"bm25": "lexical", "minilm": "sbert"}.get(model, "dense")


def test_full_paper_grid_composes(hydra_ctx):
    """All 168 cells: 2 models × 14 datasets × 2 adapters × 3 ablations."""
    n = 0
    for model, dataset, adapter, ablation in itertools.product(
        ["repllama", "e5-mistral"],
        sorted(PAPER_DATASETS),
        ["in-domain", "msmarco"],
        ["both", "without", "with"],
    ):
        cfg = _compose([f"model={model}", f"dataset={dataset}", f"adapter={adapter}", f"ablation={ablation}"])
        expected = "msmarco" if adapter == "msmarco" else ("fever" if dataset == "climate-fever" else dataset)
        assert cfg.adapter.corpus == expected
        n += 1
    assert n == 168


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(hydra_ctx, experiment):
    cfg = _compose([f"experiment={experiment}"])
    assert cfg.model.name and CellConfig.from_hydra(cfg)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.batch_size=-1", "config key train.batch_size=-1: must be ≥ 1"),
        ("train.batch_size=0", "config key train.batch_size=0: must be ≥ 1"),
        ("train.epochs=0", "config key train.epochs=0: must be ≥ 1"),
        ("search.top_k=0", "config key search.top_k=0: must be ≥ 1"),
        ("readapt.alpha=abc", "config key readapt.alpha='abc': use a number or one of 'auto'"),
        ("train.batching=fast", "config key train.batching='fast': use one of 'paper' or 'packed'"),
        (
            "readapt.knowledge_scaling=x",
            "config key readapt.knowledge_scaling='x': use one of 'delta' or 'peft_scale'",
        ),
        ("adapter.dropout=1.5", "config key adapter.dropout=1.5: must be < 1"),
        ("store.verify=some", "config key store.verify='some': use one of 'auto', 'full' or 'sampled'"),
        ("run.stage=train", "config key run.stage='train': use one of 'all', 'adapters' or 'base'"),
        ("run.on_busy=sleep", "config key run.on_busy='sleep': use one of 'wait' or 'exit'"),
        ("store.full_check_max_gb=-1", "config key store.full_check_max_gb=-1: must be ≥ 0"),
        # Refused before any work (they used to fail with a traceback after the base retriever was encoded).
        (
            "readapt.alpha=nan",
            "config key readapt.alpha=nan: must be auto or a finite number in [-1000, 1000]",
        ),
        ("readapt.beta=1e7", "config key readapt.beta=10000000.0: must be ≤ 1000"),
        ("readapt.beta=inf", "config key readapt.beta=inf: Input should be a finite number"),
        ("readapt.alpha_selection.grid=[nan]", "config key readapt.alpha_selection.grid.0=nan: Input should"),
        ("train.seed=-1", "config key train.seed=-1: must be ≥ 0"),
        ("evaluate.k_values=[0,-3]", "config key evaluate.k_values.0=0: must be ≥ 1"),
        ("evaluate.k_values=[]", "config key evaluate.k_values=[]:"),
        ("model.query_template='{0}'", "config key model.query_template='{0}': field {0} is not allowed"),
        (
            "model.query_template='{query.__class__}'",
            "config key model.query_template='{query.__class__}': field",
        ),
        ("model.query_template='{query[0]}'", "config key model.query_template='{query[0]}': field"),
        ("model.query_template=same", "config key model.query_template='same': has no {query}"),
        ("model.passage_template='{title}'", "config key model.passage_template='{title}': has no {text}"),
        (
            "model.passage_template='{passage}'",
            "config key model.passage_template='{passage}': field {passage}",
        ),
        ("model.query_template='{query'", "config key model.query_template='{query': not a valid template"),
        # Names become folders: refused unless they match readaptir.paths.NAME_PATTERN.
        ("model.name=../../../x", "config key model.name='../../../x': not a valid name"),
        ("model.name=''", "config key model.name='': empty"),
        ("adapter.name=..", "config key adapter.name='..': not a valid name"),
        ("dataset.name=a/b", "config key dataset.name='a/b': not a valid name"),
        ("dataset.beir_name=../x", "config key dataset.beir_name='../x': not a valid name"),
        ("dataset.split=../test", "config key dataset.split='../test': not a valid name"),
        ("adapter.corpus=../x", "config key adapter.corpus='../x': not a valid name"),
        ("paths.results_dir=''", "config key paths.results_dir='': empty"),
        # Hub pins: the revision is a branch, tag or commit (a bad one blamed login or a missing folder).
        ("model.pretrained=org/x@..", "config key model.pretrained='org/x@..': revision '..' is not"),
        ("model.pretrained=org/x@", "config key model.pretrained='org/x@': revision '' is not"),
        ("model.retriever=a/b/c@main", "config key model.retriever='a/b/c@main': a Hub pin is org/name@"),
    ],
)
def test_bad_values_are_one_line_errors(hydra_ctx, override, message):
    with pytest.raises(ConfigError) as e:
        CellConfig.from_hydra(_compose([override]))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_model_conventions(hydra_ctx):
    r = _compose(["model=repllama"]).model
    assert r.query_template == "query: {query}" and r.passage_template == "passage: {title} {text}"
    assert r.retriever_kind == "lora" and r.query_max_len == r.passage_max_len == 512
    e = _compose(["model=e5-mistral"]).model
    assert e.query_template == "Instruct: {task}\nQuery: {query}" and e.passage_template == "{title} {text}"
    assert e.retriever_kind == "full"
    assert _compose(["model=tiny-llama"]).model.tiny == "llama"
    assert _compose(["model=tiny-mistral"]).model.retriever_kind == "full"


def test_paper_recipe_defaults(hydra_ctx):
    cfg = _compose(["model=repllama", "dataset=scifact"])
    a, t = cfg.adapter, cfg.train
    assert (a.method, a.r, a.alpha, a.dropout) == ("dora", 32, 64, 0.05)
    assert list(a.targets) == ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    assert (t.lr, t.batch_size, t.epochs, t.max_tokens, t.batching) == (2e-4, 4, 1, 1024, "paper")
    assert (cfg.readapt.alpha, cfg.readapt.beta, cfg.readapt.knowledge_scaling) == (0.5, 1.0, "delta")


def test_data_dir_follows_env(hydra_ctx, monkeypatch, tmp_path):
    monkeypatch.setenv("READAPTIR_DATA", str(tmp_path))
    assert _compose([]).paths.data_dir == str(tmp_path)


def test_slurm_launcher_composes(hydra_ctx):
    cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1


def test_unusable_folders_are_one_line_errors(hydra_ctx, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (f"paths.data_dir={a_file}", "config key paths.data_dir="),
        (
            f"paths.cache_dir={a_file}/cache",
            f"config key paths.cache_dir='{a_file}/cache': {a_file} is a file",
        ),
        (f"paths.results_dir={a_file}", "config key paths.results_dir="),
    ]
    for override, message in cases:
        with pytest.raises(ConfigError) as e:
            CellConfig.from_hydra(_compose([override]))
        assert str(e.value).startswith(message) and "\n" not in str(e.value), override
    # Plan mode writes nothing, so an unwritable cache is fine there.
    assert CellConfig.from_hydra(_compose([f"paths.cache_dir={a_file}/cache", "run.plan=true"]))


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("unshare") is None, reason="needs a read-only folder")
def test_read_only_cache_is_refused_before_anything_runs(tmp_path):
    """A read-only cache (a read-only mount for root, a 0555 folder for others) is one line, before loading."""
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (
        "import sys; from hydra import compose, initialize_config_dir\n"
        "from readaptir.config import CellConfig, ConfigError\n"
        f"with initialize_config_dir(config_dir='{CONF}', version_base='1.3'):\n"
        f"    cfg = compose(config_name='config', overrides=['paths.cache_dir={ro}/cache'])\n"
        "try:\n    CellConfig.from_hydra(cfg)\nexcept ConfigError as e:\n    print('REFUSED', e)\n"
    )
    if os.geteuid() == 0:  # root writes through 0555: make the folder a read-only bind mount instead
        cmd = ["unshare", "-m", "sh", "-c", f'mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} && '
               f'{sys.executable} -c "$0"', script]  # fmt: skip
    else:
        ro.chmod(0o555)
        cmd = [sys.executable, "-c", script]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert f"REFUSED config key paths.cache_dir='{ro}/cache': {ro} is not writable" in out.stdout, out.stderr


def test_an_empty_environment_variable_is_refused_naming_it(hydra_ctx, monkeypatch):
    """READAPTIR_CACHE= (set, empty) put the results store at /results."""
    monkeypatch.setenv("READAPTIR_CACHE", "")
    with pytest.raises(ConfigError, match=r"paths\.cache_dir='': empty; .*READAPTIR_CACHE"):
        CellConfig.from_hydra(_compose([]))
    monkeypatch.setenv("READAPTIR_CACHE", "cache")
    monkeypatch.setenv("READAPTIR_DATA", "")
    with pytest.raises(ConfigError, match=r"paths\.data_dir='': empty; .*READAPTIR_DATA"):
        CellConfig.from_hydra(_compose([]))


def test_valid_pins_templates_and_subsets_are_kept(hydra_ctx):
    m = CellConfig.from_hydra(
        _compose(["model=repllama", "model.pretrained=meta-llama/Llama-2-7b-hf@a1b2c3"])
    ).model
    assert m.pretrained.endswith("@a1b2c3")
    assert CellConfig.from_hydra(_compose(["model.query_template='{{literal}} {task}: {query}'"]))
    with pytest.raises(
        ConfigError, match=r"dataset\.corpus_size=200: a subset holds dataset\.subset\.passages=1"
    ):
        CellConfig.from_hydra(
            _compose(["dataset=mini/scifact", "dataset.subset.passages=1", "dataset.corpus_size=200"])
        )


def test_job_folders_use_safe_names(hydra_ctx):
    """Hydra makes the job folder from model.name before the cell validates it: `..` must not climb out."""
    cfg = compose(config_name="config", overrides=["model.name=../../../x", "dataset.name=/etc"],
                  return_hydra_config=True)  # fmt: skip
    OmegaConf.update(cfg, "hydra.job.num", 0, force_add=True)
    for key in ("hydra.run.dir", "hydra.sweep.subdir"):
        value = str(OmegaConf.select(cfg, key))
        assert ".." not in Path(value).parts and "/etc" not in value and "x" in value, (key, value)


@pytest.mark.parametrize("ref", ["org/x@..", "org/x@", "org/x@a..b", "org/x@v1.lock"])
def test_a_bad_hub_pin_is_named_before_the_hub_is_asked(ref):
    """It blamed `hf auth login` or a missing folder."""
    from readaptir.models.hub import ModelNotFound, resolve_model_dir

    with pytest.raises(ModelNotFound, match=r"revision .* is not a branch, tag or commit") as e:
        resolve_model_dir(ref)
    assert "login" not in str(e.value)

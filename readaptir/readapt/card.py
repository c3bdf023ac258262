"""Model cards (``README.md``) for knowledge adapters and readapted retrievers: what they are, the recipe,
the corpus, and the numbers, so a folder copied or pushed to the Hub explains itself.

PEFT's ``save_pretrained`` writes a blank card whose ``base_model`` is a local path; the cell replaces it
with :func:`adapter_card`. A readapted retriever saved (``readapt.save_model=true``) or pushed
(``readapt.push_to_hub=<repo id>``) carries :func:`retriever_card`, with the evaluated cell's metrics
when known. Inputs are plain values (specs, dicts), so cards can be built and tested without models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from readaptir.config import AdapterRecipe, ModelSpec, ReadaptSettings, TrainSettings

PAPER = "Fleshman & Van Durme (2024), RE-AdaptIR: Improving Information Retrieval through Reverse Engineered Adaptation"
SUBSETS = {
    "both": "all passages",
    "without": "all passages except those judged relevant in the evaluated split",
    "with": "only the passages judged relevant in the evaluated split",
}


def _front_matter(
    base_model: str | None, library: str, tags: list[str], pipeline: str | None = None
) -> list[str]:
    lines = ["---", f"library_name: {library}"]
    if base_model:  # a Hub id; a local path means nothing to a reader
        lines.append(f"base_model: {base_model}")
    if pipeline:
        lines.append(f"pipeline_tag: {pipeline}")
    return lines + ["tags:", *[f"- {t}" for t in tags], "---", ""]


def _recipe_lines(recipe: AdapterRecipe, train: TrainSettings) -> list[str]:
    return [
        f"- adapter: {recipe.method.upper()}, r={recipe.r}, alpha={recipe.alpha:g}, dropout={recipe.dropout:g}, "
        f"targets {', '.join(recipe.targets)}",
        f"- training: next-token prediction, AdamW lr {train.lr:g} (linear schedule, warmup {train.warmup_ratio:g}), "
        f"{train.epochs} epoch(s), {train.batching} batching of {train.batch_size} × ≤{train.max_tokens} tokens, "
        f"seed {train.seed}",
    ]


def _corpus_line(corpus: str, subset: str, stats: Mapping[str, Any]) -> str:
    n = stats.get("passages")
    size = f": {n:,} passages, {stats.get('tokens', 0):,} tokens" if isinstance(n, int) else ""
    return f"- corpus: BeIR `{corpus}`, {SUBSETS.get(subset, subset)}{size}"


def adapter_card(base_model: str | None, recipe: AdapterRecipe, train: TrainSettings, corpus: str, subset: str,
                 stats: Mapping[str, Any]) -> str:  # fmt: skip
    """The knowledge adapter's card: the corpus it learned, the recipe, the training numbers."""
    lines = _front_matter(base_model, "peft", ["readaptir", "re-adaptir", "knowledge-adapter", recipe.method])
    lines += [
        f"# Knowledge adapter: {corpus}",
        "",
        f"A {recipe.method.upper()} adapter that taught {base_model or 'the pretrained model'} the passages of "
        f"BeIR `{corpus}` by next-token prediction, for RE-AdaptIR ({PAPER}): the retriever is rebuilt as "
        "W_pre + α·Ψ + β·Δ, Ψ this adapter's merged delta, Δ the retriever's own fine-tuning delta.",
        "",
        "## Recipe",
        "",
        _corpus_line(corpus, subset, stats),
        *_recipe_lines(recipe, train),
        "",
        "## Training",
        "",
        *[f"- {k}: {_fmt(stats[k])}" for k in ("steps", "passages", "tokens", "first_loss", "final_loss",
                                                "padding_fraction", "passages_per_s", "world_size") if k in stats],
        "",
        "## Use",
        "",
        "```python",
        "import readaptir",
        f'model, report = readaptir.build_readapted_model("{base_model or "<pretrained>"}", "<retriever>", "<this folder>", alpha=0.5)',
        "```",
        "",
        "Made with [readaptir](https://pypi.org/project/readaptir/).",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def retriever_card(model: ModelSpec, readapt: ReadaptSettings, recipe: AdapterRecipe, train: TrainSettings,
                   corpus: str, subset: str, stats: Mapping[str, Any], results: Mapping[str, Any] | None = None,
                   base_model: str | None = None) -> str:  # fmt: skip
    """A readapted retriever's card; ``results`` (a results.json record) adds the evaluated cell's metrics."""
    lines = _front_matter(base_model, "transformers", ["readaptir", "re-adaptir", "retrieval", "sentence-similarity"],
                          "feature-extraction")  # fmt: skip
    lines += [
        f"# {model.name} readapted with {corpus}",
        "",
        f"The retriever `{model.retriever}` rebuilt by RE-AdaptIR ({PAPER}) as W_pre + {readapt.alpha:g}·Ψ + "
        f"{readapt.beta:g}·Δ: `{model.pretrained}` plus its retrieval delta Δ and the delta Ψ of a knowledge adapter "
        f"trained on BeIR `{corpus}` without labels (knowledge scaling: {readapt.knowledge_scaling}). No LM head.",
        "",
        "## Recipe",
        "",
        _corpus_line(corpus, subset, stats),
        *_recipe_lines(recipe, train),
        "",
        "## Encoding",
        "",
        f"- query: `{model.query_template}`; passage: `{model.passage_template}` (max {model.query_max_len} / "
        f"{model.passage_max_len} tokens)",
        "- ids: [BOS] + tokens + [EOS]; the embedding is the last (EOS) position's hidden state, L2-normalised; "
        "score = dot product",
    ]  # fmt: skip
    if results:
        lines += ["", *_metrics_lines(results)]
    lines += ["", "Made with [readaptir](https://pypi.org/project/readaptir/)."]
    return "\n".join(lines) + "\n"


def _metrics_lines(results: Mapping[str, Any]) -> list[str]:
    cell, base, ra = results.get("cell", {}), results.get("base", {}), results.get("readapted", {})
    lines = [
        f"## Evaluation: BeIR `{cell.get('dataset', '?')}`",
        "",
        "| metric | base retriever | readapted | Δ |",
        "|---|---:|---:|---:|",
    ]
    for k in ("NDCG@10", "Recall@100", "MRR@10"):
        if k in base and k in ra:
            lines.append(
                f"| {k} | {100 * base[k]:.1f} | {100 * ra[k]:.1f} | {100 * (ra[k] - base[k]):+.1f} |"
            )
    p = results.get("significance", {}).get("p_value")
    if p is not None:
        lines += ["", f"Paired t-test on per-query nDCG@10: p = {p:.3g}."]
    return lines


def _fmt(v: Any) -> str:
    return f"{v:,.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

"""Regenerate the toy BeIR dataset shipped in readaptir/resources/toy (demo and tests).

Synthetic, templated sentences about invented animal facts: 240 passages, 48 test queries, and 48 train
queries, with BeIR's file layout. Deterministic; run `python -m readaptir.resources.make_toy` to rewrite.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ANIMALS = [
    "otter",
    "heron",
    "badger",
    "lynx",
    "tapir",
    "gecko",
    "puffin",
    "bison",
    "marten",
    "ibis",
    "okapi",
    "newt",
    "walrus",
    "falcon",
    "lemur",
    "hare",
    "moose",
    "quokka",
    "stork",
    "viper",
    "wombat",
    "yak",
    "zebra",
    "condor",
]
FACETS = {
    "diet": (
        "eats",
        ["river fish", "beetles", "tender grass", "wild berries", "small rodents", "seaweed"],
        "What does the {a} eat?",
    ),
    "habitat": (
        "lives in",
        ["cold marshes", "pine forests", "rocky coasts", "dry savannas", "high valleys"],
        "Where does the {a} live?",
    ),
    "colour": (
        "has fur or feathers that are",
        ["rust red", "slate grey", "pale gold", "deep brown", "ash white"],
        "What colour is the {a}?",
    ),
    "size": (
        "grows to about",
        ["thirty centimetres", "one metre", "two metres", "half a metre"],
        "How large does the {a} grow?",
    ),
    "lifespan": (
        "usually lives for",
        ["six years", "twelve years", "twenty years", "forty years"],
        "How long does the {a} live?",
    ),
    "sound": (
        "communicates with",
        ["low whistles", "sharp clicks", "soft grunts", "long howls"],
        "How does the {a} communicate?",
    ),
    "young": (
        "raises its young in",
        ["hidden burrows", "floating nests", "tree hollows", "cliff ledges"],
        "Where does the {a} raise its young?",
    ),
    "predator": (
        "is hunted mainly by",
        ["eagles", "wolves", "large snakes", "sharks", "foxes"],
        "What hunts the {a}?",
    ),
    "season": (
        "is most active in",
        ["early spring", "late summer", "deep winter", "the rainy season"],
        "When is the {a} most active?",
    ),
    "group": (
        "travels in",
        ["pairs", "large herds", "small families", "loose colonies", "solitude"],
        "Does the {a} live in groups?",
    ),
}


def main(out: Path = Path(__file__).parent / "toy") -> None:
    rng = random.Random(13)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    corpus, facts = [], {}
    for a in ANIMALS:
        for facet, (verb, values, _) in FACETS.items():
            value = rng.choice(values)
            doc_id = f"{a}-{facet}"
            facts[doc_id] = value
            filler = rng.choice(["Field notes agree that", "Observers report that", "It is known that", ""])
            text = f"{filler} the {a} {verb} {value}.".strip().capitalize()
            extra = rng.choice([f" Keepers say the {a} is calm.", f" The {a} is rarely seen.", ""])
            corpus.append({"_id": doc_id, "title": f"The {a}: {facet}", "text": text + extra})
    pairs = [(a, f) for a in ANIMALS for f in FACETS]
    rng.shuffle(pairs)
    queries, qrels = [], {"test": [], "train": []}
    for i, (a, facet) in enumerate(pairs[:96]):
        qid = f"q{i:03d}"
        queries.append({"_id": qid, "text": FACETS[facet][2].format(a=a)})
        qrels["test" if i < 48 else "train"].append((qid, f"{a}-{facet}", 1))
    with open(out / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in corpus)
    with open(out / "queries.jsonl", "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in queries)
    for split, rows in qrels.items():
        with open(out / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t{s}\n" for q, d, s in rows)


if __name__ == "__main__":
    main()

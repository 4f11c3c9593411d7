"""Re-ranked search on every person of a world the engine was never trained on, in galleries the size of its test
split: what a 32-person test split measures once, measured on all 160 people of a seed world.

    OMP_NUM_THREADS=2 python benchmarks/unseen_people.py --base DIR --adapter DIR --world W [--out FILE]

The world's one-edit families (the people its triplets link, the look-alikes a test split keeps together) are dealt,
shuffled, into groups of about the test split's size; each group is a gallery of its own for text→image and composed
search (the CLI's re-ranking at `retrieval.judge.ANSWER_WEIGHT`, with the MLLM's answers and with true answers, and the
embedding alone) and for image→image search, beside the text→image Rank-1 of a perfect reader of its captions
(`caption_oracle`: how far its people can be told apart by what captions state). The MLLM answers the bank once for
every image, so the issue's five VQA questions are scored on every image too (per view; upper type also per view and
hair length).
Prints a table and writes benchmarks/results/unseen_people.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.answers import TARGET_KEYS, answer_accuracy, caption_oracle, searches, views  # noqa: E402
from finetune.data import load_split, load_triplets  # noqa: E402
from finetune.data.world import QUESTION_BANK  # noqa: E402
from mllm_embed import load_embedder  # noqa: E402
from retrieval.evaluate import encode_gallery, evaluate_i2i  # noqa: E402
from retrieval.judge import ANSWER_WEIGHT, bank_answerer, gallery_answers, world_vocabulary  # noqa: E402

# (task, metric) per figure, as seed_gap.py names them; image search has no answers, so only the embedding's
FIGURES = {"text R1": ("t2i", "R1"), "composed R@1": ("composed", "R@1"), "exact R@10": ("composed", "exact_R@10"),
           "image mAP": ("i2i", "mAP")}
SOURCES = ("mllm", "truth", "embedding")  # the MLLM's answers, true answers, no re-ranking


def families(records, triplets) -> list[list[int]]:
    """The person ids of each family: people a triplet links, joined transitively; anyone else alone."""
    parent = {r.person_id: r.person_id for r in records}

    def root(p: int) -> int:
        while parent[p] != p:
            p = parent[p]
        return p

    for t in triplets:
        parent[root(t.reference_id)] = root(t.target_id)
    out: dict[int, list[int]] = {}
    for p in sorted(parent):
        out.setdefault(root(p), []).append(p)
    return list(out.values())


def deal(fams: list[list[int]], size: int, seed: int = 0) -> list[list[int]]:
    """Whole families, shuffled, each to the group with the fewest people: round(people / size) groups."""
    order = list(fams)
    random.Random(seed).shuffle(order)
    groups: list[list[int]] = [[] for _ in range(max(1, round(sum(map(len, fams)) / size)))]
    for fam in order:
        min(groups, key=len).extend(fam)
    return [sorted(g) for g in groups]


def upper_type_by_view_and_hair(records, answers: dict, view_of: dict[str, str]) -> dict[str, dict[str, float]]:
    """Upper type answers per view and hair length ({"side long": {right, images}, ...}): long hair can cover the
    hood a side view shows behind the neck."""
    cells: dict[str, list[bool]] = {}
    for r in records:
        cell = f"{view_of[Path(r.image).name]} {r.attributes['hair_length']}"
        cells.setdefault(cell, []).append(answers[r.image]["upper_type"] == r.attributes["upper_type"])
    return {k: {"right": 100 * float(np.mean(v)), "images": len(v)} for k, v in sorted(cells.items())}


def group_figures(embedder, records, triplets, answers: dict, vocabulary) -> dict:
    """{source: {t2i, composed}} on one gallery, and the embedding's i2i."""
    vecs = encode_gallery(embedder, records, 32)
    out = {source: searches(embedder, records, triplets, vecs, answers, vocabulary, source, ANSWER_WEIGHT)
           for source in ("mllm", "truth")}
    out["embedding"] = searches(embedder, records, triplets, vecs, answers, vocabulary, "mllm", 0.0)
    out["embedding"]["i2i"] = evaluate_i2i(embedder, records, image_vecs=vecs)
    return out


def _spread(values: list[float]) -> dict[str, float]:
    v = np.array(values)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "min": float(v.min()),
            "max": float(v.max())}


def summary(groups: list[dict]) -> dict:
    """{source: {figure: {mean, sd, min, max}}} over the groups (sd: between groups, ddof 1), and the same of the
    caption oracle's text R1 ({"caption_oracle": {"text R1": ...}})."""
    out = {source: {name: _spread([g["figures"][source][task][metric] for g in groups])
                    for name, (task, metric) in FIGURES.items() if task in groups[0]["figures"][source]}
           for source in SOURCES}
    out["caption_oracle"] = {"text R1": _spread([g["caption_oracle"] for g in groups])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--world", type=Path, required=True, help="a world the base and adapter never trained on")
    ap.add_argument("--adapter", type=Path, required=True, help="the embedder's adapter (stage 2)")
    ap.add_argument("--group-size", type=int, default=0, help="people per gallery (0: the world's test split's)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "unseen_people.json")
    args = ap.parse_args()
    start = time.time()
    if not (args.world / "annotations.jsonl").is_file():
        raise SystemExit(f"{args.world}: no annotations.jsonl — point --world at a world `lineup world` rendered")
    records, triplets = load_split(args.world, None, required=True), load_triplets(args.world, None)
    size = args.group_size or len({r.person_id for r in records if r.split == "test"})
    embedder = load_embedder(str(args.base), adapter=str(args.adapter))
    vocabulary = world_vocabulary()
    answers = gallery_answers(bank_answerer(embedder, vocabulary), [r.image for r in records], QUESTION_BANK)
    accuracy = answer_accuracy(args.world, records, answers, [q for q in QUESTION_BANK if q["key"] in TARGET_KEYS])
    groups = []
    for people in deal(families(records, triplets), size):
        chosen = set(people)
        mine = [r for r in records if r.person_id in chosen]
        theirs = [t for t in triplets if t.reference_id in chosen]
        groups.append({"people": len(people), "images": len(mine), "triplets": len(theirs),
                       "figures": group_figures(embedder, mine, theirs, answers, vocabulary),
                       "caption_oracle": caption_oracle(mine, vocabulary)})
    report = {"world": str(args.world), "base": str(args.base), "adapter": str(args.adapter),
              "answer_weight": ANSWER_WEIGHT, "group_size": size, "people": len({r.person_id for r in records}),
              "images": len(records), "answer_accuracy": accuracy,
              "upper_type_by_view_and_hair": upper_type_by_view_and_hair(records, answers, views(args.world)),
              "groups": groups, "summary": summary(groups), "seconds": round(time.time() - start, 1)}

    table = Table(title=f"{report['people']} unseen people in {len(groups)} galleries of ~{size}: "
                        "mean (sd, min–max)")
    for col in ("figure", *SOURCES, "caption_oracle"):
        table.add_column(col)
    for name in FIGURES:
        cells = (report["summary"][source].get(name) for source in (*SOURCES, "caption_oracle"))
        table.add_row(name, *(f"{s['mean']:.1f} ({s['sd']:.1f}, {s['min']:.1f}–{s['max']:.1f})" if s else ""
                              for s in cells))
    Console(width=120, color_system=None).print(table)
    print("answers right on all images: " + ", ".join(f"{k} {v['all']:.1f}" for k, v in accuracy.items()))
    print("upper type by view and hair length: " + ", ".join(
        f"{k} {v['right']:.1f} ({v['images']})" for k, v in report["upper_type_by_view_and_hair"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {args.out} in {report['seconds']} s")


if __name__ == "__main__":
    main()

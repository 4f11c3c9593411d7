"""Where composed retrieval fails: identity-level Rank-1 per edited attribute, and how often the top hit is the
reference person (the query did not move off the person it starts from).

    OMP_NUM_THREADS=2 python benchmarks/composed_edits.py --base DIR --world DIR --adapter DIR [--adapter DIR ...]

On the world's test split (gallery: every test image; queries: every test triplet, the reference image itself left
out of its ranking as in `retrieval.evaluate.evaluate_composed`), per adapter and per edited attribute: queries,
Rank-1 (top person is the target), reference share (top person is the reference), exact-target R@10, and overall
the Rank-1 a query would reach were the reference person's other images out of the gallery. With
`--answer-weight W` the ranking is the engine's answer re-ranking (`retrieval.evaluate.evaluate_composed`'s:
cosine + W × the evidence of the base MLLM's answers about each gallery image for the modification's new values),
the answers asked first. Prints a table and writes benchmarks/results/composed_edits.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.data import load_split, read_jsonl  # noqa: E402
from finetune.data.world import QUESTION_BANK  # noqa: E402
from mllm_embed import load_embedder  # noqa: E402
from retrieval.evaluate import encode_gallery, evidence_matrix  # noqa: E402
from retrieval.judge import bank_answerer, gallery_answers, world_vocabulary  # noqa: E402
from retrieval.metrics import recall_at_k  # noqa: E402


def edit_breakdown(embedder, world: Path, answer_weight: float = 0.0) -> dict:
    records = load_split(world, "test")
    column = {Path(r.image).resolve(): j for j, r in enumerate(records)}
    pids = np.array([r.person_id for r in records])
    rows = [t for t in read_jsonl(world / "triplets.jsonl") if t["split"] == "test"]
    rows = [t for t in rows if (world / t["reference"]).resolve() in column and (world / t["target"]).resolve() in column]
    gallery = encode_gallery(embedder, records, 32)
    queries = embedder.encode_composed([(str(world / t["reference"]), t["modification"]) for t in rows], batch_size=32)
    sim = queries @ gallery.T
    if answer_weight:
        answers = gallery_answers(bank_answerer(embedder), [r.image for r in records], QUESTION_BANK)
        vocabulary = world_vocabulary()
        sim += answer_weight * evidence_matrix(embedder, [answers[r.image] for r in records],
                                               [vocabulary.modification(t["modification"]) for t in rows], vocabulary)
    ref_col = np.array([column[(world / t["reference"]).resolve()] for t in rows])
    target_col = np.array([column[(world / t["target"]).resolve()] for t in rows])
    sim[np.arange(len(rows)), ref_col] = -np.inf
    ref_id, target_id = np.array([t["reference_id"] for t in rows]), np.array([t["target_id"] for t in rows])
    top = pids[sim.argmax(1)]
    without_ref = np.where(pids[None, :] == ref_id[:, None], -np.inf, sim)
    by_edit = defaultdict(list)
    for i, t in enumerate(rows):
        by_edit[t["edit"]["attribute"]].append(i)

    def summary(idx) -> dict:
        idx = np.asarray(idx)
        return {"queries": len(idx), "R@1": 100 * float(np.mean(top[idx] == target_id[idx])),
                "reference_top": 100 * float(np.mean(top[idx] == ref_id[idx])),
                "exact_R@10": recall_at_k(sim[idx], target_col[idx], ks=(10,))["R@10"]}

    return {"all": {**summary(range(len(rows))),
                    "R@1_without_reference_person": 100 * float(np.mean(pids[without_ref.argmax(1)] == target_id))},
            "by_edit": {k: summary(v) for k, v in sorted(by_edit.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--world", required=True)
    ap.add_argument("--adapter", action="append", required=True, help="adapter folder (repeatable)")
    ap.add_argument("--answer-weight", type=float, default=0.0, help="answer re-ranking weight (0: the embedding)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "composed_edits.json"))
    args = ap.parse_args()
    result = {"base": args.base, "world": args.world, "answer_weight": args.answer_weight, "adapters": {}}
    console = Console()
    for adapter in args.adapter:
        embedder = load_embedder(args.base, adapter=adapter)
        found = edit_breakdown(embedder, Path(args.world).resolve(), args.answer_weight)
        result["adapters"][adapter] = found
        table = Table(title=f"composed retrieval by edited attribute: {adapter}")
        for col in ("edit", "queries", "R@1", "reference top", "exact R@10"):
            table.add_column(col, justify="left" if col == "edit" else "right")
        for name, s in [("all", found["all"]), *found["by_edit"].items()]:
            table.add_row(name, str(s["queries"]), f"{s['R@1']:.1f}", f"{s['reference_top']:.1f}",
                          f"{s['exact_R@10']:.1f}")
        console.print(table)
        console.print(f"R@1 with the reference person's other images out of the gallery: "
                      f"{found['all']['R@1_without_reference_person']:.1f}")
    Path(args.out).write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

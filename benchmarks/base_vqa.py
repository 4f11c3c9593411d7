"""Does a base see or remember? Its VQA accuracy on the people it trained on against people it never saw.

    OMP_NUM_THREADS=2 python benchmarks/base_vqa.py --base NAME=DIR [--base NAME=DIR ...] --world W [--out FILE]

For each base, `--questions` random VQA pairs of the target attributes from each split of one world (the base's
bootstrap world: train = the people its stage 0 trained on, val + test = people it never saw), answered greedily
(`finetune.stage0.vqa_accuracy`). Prints a table and writes benchmarks/results/base_vqa.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.data import load_vqa  # noqa: E402
from finetune.stage0 import vqa_accuracy  # noqa: E402
from mllm_embed import load_embedder  # noqa: E402

ATTRIBUTES = ("upper_type", "lower_type", "hair_color", "gender", "glasses")
SPLITS = {"train": ("train",), "held-out": ("val", "test")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", action="append", required=True, help="NAME=DIR; repeat to compare bases")
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--questions", type=int, default=500, help="VQA pairs per split")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "base_vqa.json")
    args = ap.parse_args()
    pairs = {}
    for name, splits in SPLITS.items():
        rows = [(r.image, r.question, r.answer, r.attribute) for s in splits for r in load_vqa(args.world, s)
                if r.attribute in ATTRIBUTES]
        pairs[name] = random.Random(0).sample(rows, min(args.questions, len(rows)))
    report = {"world": str(args.world), "attributes": ATTRIBUTES, "bases": {}}
    for spec in args.base:
        name, _, path = spec.partition("=")
        start = time.time()
        embedder = load_embedder(path, dtype="fp32")
        report["bases"][name] = {"path": path, **{split: vqa_accuracy(embedder, p) for split, p in pairs.items()},
                                 "seconds": round(time.time() - start, 1)}
    table = Table(title=f"VQA accuracy %, {args.world}: train people against held-out people")
    for col in ("base", "split", "all", *ATTRIBUTES):
        table.add_column(col)
    for name, result in report["bases"].items():
        for split in SPLITS:
            got = result[split]
            table.add_row(name, split, f"{100 * got['accuracy']:.1f}",
                          *[f"{100 * got['by_attribute'].get(a, float('nan')):.1f}" for a in ATTRIBUTES])
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

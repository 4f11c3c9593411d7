"""Build a tiny base (`lineup bootstrap` without the CLI) and measure what stage 0 taught it.

    OMP_NUM_THREADS=2 python benchmarks/tiny_base_quality.py [--size tiny] [--identities 200] [--epochs 3]
    OMP_NUM_THREADS=2 python benchmarks/tiny_base_quality.py --model mllm_embed/bases/tiny --seed 0 \
        --out benchmarks/results/shipped_base_quality.json

Generates a world, builds the base, runs stage 0 on the train split (or, with --model, takes a finished base
and scores it on a world it never saw), then reports VQA accuracy per
attribute on held-out identities (test split) against the majority-answer baseline, and zero-shot
text->image Rank-1 / mAP (test captions vs test images, no fine-tuning), and the balanced accuracy of the two
yes/no judges (text-image match, same person side by side) on balanced test pairs. Prints tables and writes
benchmarks/results/tiny_base_quality.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.data import load_split, load_vqa  # noqa: E402
from finetune.data.world import WorldConfig, generate_world, world_texts  # noqa: E402
from finetune.stage0 import Judgements, Stage0Config, judge_accuracy, pretrain, split_people  # noqa: E402
from mllm_embed import load_embedder  # noqa: E402
from mllm_embed.tiny import build_tiny_base  # noqa: E402


def zero_shot_rank(embedder, world: Path) -> dict:
    """Text->image Rank-1 and mAP over the test split (one caption per image as a query)."""
    test = load_split(world, "test")
    gallery = embedder.encode_images([r.image for r in test])
    queries = embedder.encode_text([r.captions[0] for r in test])
    pids = np.array([r.person_id for r in test])
    sim = queries @ gallery.T
    order = np.argsort(-sim, axis=1)
    match = pids[order] == pids[:, None]
    r1 = float(match[:, 0].mean() * 100)
    ap = [np.mean(np.cumsum(m)[m] / (np.flatnonzero(m) + 1)) for m in match]
    return {"R1": r1, "mAP": float(np.mean(ap) * 100), "queries": len(test),
            "chance_R1": float(np.mean([(pids == p).sum() / len(pids) for p in pids]) * 100)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--identities", type=int, default=160)
    ap.add_argument("--images-per-id", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=Stage0Config.epochs)
    ap.add_argument("--judge-pairs", type=int, default=200, help="test pairs per yes/no judge")
    ap.add_argument("--model", type=Path, help="score this finished base instead of building one")
    ap.add_argument("--seed", type=int, default=0, help="world seed")
    ap.add_argument("--workdir", type=Path, help="keep the world and base here (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tiny_base_quality.json")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lineup-base-bench-"))
    started = time.time()
    world = work / "world"
    if not (world / "world.json").exists():
        generate_world(world, WorldConfig(identities=args.identities, images_per_id=args.images_per_id,
                                          seed=args.seed))
    if args.model:
        base, build_s = args.model, 0.0
        stage0 = json.loads((base / "stage0_done.json").read_text())
        cfg = Stage0Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in stage0["config"].items()})
    else:
        base = build_tiny_base(world_texts(world), work / "base", size=args.size)
        build_s = time.time() - started
        cfg = Stage0Config(epochs=args.epochs)
        pretrain(base, world, cfg)
        stage0 = json.loads((base / "stage0_done.json").read_text())
    emb = load_embedder(base)

    vqa = load_vqa(world)
    per_attr = {}
    for attribute in sorted({r.attribute for r in vqa}):
        train = Counter(r.answer for r in vqa if r.split == "train" and r.attribute == attribute)
        test = [r for r in vqa if r.split == "test" and r.attribute == attribute]
        if not test or not train:
            continue
        majority = train.most_common(1)[0][0]
        hits = [emb.answer(r.image, r.question) == r.answer for r in test]
        per_attr[attribute] = {"accuracy": sum(hits) / len(hits), "n": len(hits), "options": len(train),
                               "trained": not cfg.attributes or attribute in cfg.attributes,
                               "majority_baseline": sum(r.answer == majority for r in test) / len(test)}
    rank = zero_shot_rank(emb, world)
    judge = Judgements(split_people(world, "test"), emb.config)
    judges = {"match": judge_accuracy(emb, judge.match(args.judge_pairs, random.Random(0))),
              "same_person": judge_accuracy(emb, judge.same(args.judge_pairs, random.Random(1)))}
    result = {"size": args.size, "model": str(args.model or ""),
              "world": {"identities": args.identities, "images_per_id": args.images_per_id, "seed": args.seed},
              "build_s": round(build_s, 1), "stage0_s": stage0["seconds"], "stage0_loss": stage0["loss_curve"],
              "val_vqa": stage0.get("val_vqa", {}).get("accuracy"), "test_vqa": per_attr,
              "test_vqa_mean_trained": float(np.mean([v["accuracy"] for v in per_attr.values() if v["trained"]])),
              "zero_shot_text_to_image": rank, "test_judges": judges,
              "val_judges": {k: stage0.get(f"val_{k}", {}).get("balanced_accuracy") for k in ("match", "same_person")}}

    console = Console()
    table = Table(title=f"Tiny base '{args.size}' after stage 0 - VQA on held-out identities")
    for col in ("attribute", "trained", "accuracy", "majority baseline", "options", "n"):
        table.add_column(col, justify="right")
    for attribute, v in per_attr.items():
        table.add_row(attribute, "yes" if v["trained"] else "no", f"{v['accuracy']:.2f}",
                      f"{v['majority_baseline']:.2f}", str(v["options"]),
                      str(v["n"]))
    console.print(table)
    console.print(f"stage 0: {stage0['seconds']} s, loss {stage0['loss_curve'][0]:.2f} -> "
                  f"{stage0['loss_curve'][-1]:.2f}; zero-shot text->image R1 {rank['R1']:.1f}% "
                  f"(chance {rank['chance_R1']:.1f}%), mAP {rank['mAP']:.1f}%")
    console.print("yes/no judges on balanced test pairs (balanced accuracy, chance 0.50): " + ", ".join(
        f"{k} {v['balanced_accuracy']:.2f} (yes rate {v['yes_rate']:.2f}, n {v['n']})" for k, v in judges.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

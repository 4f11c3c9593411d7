"""The simulated user's whole dialogue on a project: questions only vs + relevance feedback vs + filters.

    OMP_NUM_THREADS=1 python benchmarks/dialogue.py --project DIR [--world DIR] [--rounds 3] [--queries 60]
        [--gallery-split all] [--cache mllm|truth] [--strategies best_score sum_scores context discover naive]
        [--plots DIR] [--out benchmarks/results/dialogue.json]

DIR is a Lineup project (world/, model/, runs/stage*/adapter: the most trained adapter is used; ``--world`` searches
another world with them, without retraining). The world's
``--split`` images are indexed into a temporary Qdrant Edge collection (with ``--gallery-split all`` every split's
images, so the other people are distractors), the MLLM's answers to the question bank are cached in the payload
(``--cache truth`` caches ground truth instead), and each query (the first caption of one test image) runs
``--rounds`` rounds of a dialogue with a simulated user who knows its person's attributes:

  (a) questions only — it answers the question the session picks (never one the description already answers);
  (b) + feedback — it also marks the shown top 5: its person's images positive, the images of the best-ranked
      other person negative (Qdrant recommend-family query, ``--strategy``);
  (c) + filters — it also adds one payload filter per round from its true attributes, on the question that
      rules out most of the shown top 10.

Per round: Rank-1, mAP and cumulative Hits@10 (ChatIR's measure). Also (a) without listening (how many asked
questions the description had answered), (b) under every feedback strategy, and why (a)'s last misses miss
(``misses``, ``misses_line``). Prints tables, writes the JSON, and with --plots a PNG of the three Hits@10 /
Rank-1 curves.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mllm_embed import load_embedder  # noqa: E402
from retrieval.store import FEEDBACK_STRATEGIES  # noqa: E402

console = Console(width=100)
LABELS = {"questions": "(a) questions", "feedback": "(b) + feedback", "filters": "(c) + filters"}


def plot(result: dict, out_dir: Path) -> Path:
    """Two line charts (cumulative Hits@10, Rank-1 per round) of the three variants, drawn with PIL."""
    from PIL import Image, ImageDraw

    colours = {"questions": (31, 119, 180), "feedback": (255, 127, 14), "filters": (44, 160, 44)}
    w, h, pad = 380, 300, 46
    img = Image.new("RGB", (2 * w, h + 40), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), f"simulated-user dialogue: {result['queries']} queries, gallery {result['gallery']}, "
                       f"{result['cache']} answer cache", fill="black")
    for panel, (metric, name) in enumerate((("Hits@10", "cumulative Hits@10 (%)"), ("R1", "Rank-1 (%)"))):
        x0, y0 = panel * w + pad, 40
        pw, ph = w - pad - 20, h - pad - 10
        draw.rectangle([x0, y0, x0 + pw, y0 + ph], outline="black")
        draw.text((x0 + 4, y0 + 4), name, fill="black")
        for tick in range(0, 101, 20):
            y = y0 + ph - ph * tick / 100
            draw.line([x0 - 4, y, x0, y], fill="black")
            draw.text((x0 - 28, y - 6), str(tick), fill="black")
        n = len(next(iter(result["variants"].values()))["rounds"])
        xs = [x0 + pw * (r + 0.5) / n for r in range(n)]
        for r, x in enumerate(xs):
            draw.text((x - 3, y0 + ph + 4), str(r), fill="black")
        draw.text((x0 + pw / 2 - 14, y0 + ph + 18), "round", fill="black")
        for k, (variant, res) in enumerate(result["variants"].items()):
            pts = [(x, y0 + ph - ph * row[metric] / 100) for x, row in zip(xs, res["rounds"])]
            draw.line(pts, fill=colours[variant], width=2)
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colours[variant])
            if panel == 0:
                draw.text((x0 + pw - 110, y0 + ph - 16 * (3 - k) - 4), LABELS[variant], fill=colours[variant])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "dialogue_rounds.png"
    img.save(path)
    return path


def rounds_table(title: str, rows: dict[str, dict]) -> Table:
    table = Table(title=title)
    table.add_column("")
    n = len(next(iter(rows.values()))["rounds"])
    for r in range(n):
        table.add_column(f"r{r} R1/mAP/H@10", justify="right")
    for name, res in rows.items():
        table.add_row(name, *(f"{x['R1']:.1f}/{x['mAP']:.1f}/{x['Hits@10']:.1f}" for x in res["rounds"]))
    return table


def misses_line(result: dict) -> str:
    """Why (a)'s queries that end with another person on top do: that person agrees with everything known of the
    wanted one (no answer so far could part them); or differs in something known that the cache has wrong (its
    answer, or the wanted person's); or neither (the scores' weighing)."""
    misses = result["misses"]
    alike = sum(not m["top_differs"] for m in misses)
    misread = sum(bool(m["top_differs"]) and bool(set(m["top_differs"]) & set(m["top_cached_wrong"])
                                                  or m["target_cached_wrong"]) for m in misses)
    return (f"(a) after the last round {len(misses)} of {result['queries']} queries have another person on top: "
            f"{alike} agree with all that is known of the wanted person, {misread} differ in something known "
            f"that the cache has wrong for them or for the wanted person, {len(misses) - alike - misread} neither")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, required=True, help="project folder: world/, model/, runs/")
    parser.add_argument("--adapter", type=Path, default=None, help="adapter (default: stage2, else stage1)")
    parser.add_argument("--world", type=Path, default=None,
                        help="another world to search (default: the project's), e.g. one of another seed")
    parser.add_argument("--split", default="test")
    parser.add_argument("--gallery-split", default=None, help="'all' adds every split's images as distractors")
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", choices=["mllm", "truth"], default="mllm")
    parser.add_argument("--strategy", choices=FEEDBACK_STRATEGIES, default=None,
                        help="feedback strategy of (b) and (c) (default: THIConfig's)")
    parser.add_argument("--strategies", nargs="*", default=list(FEEDBACK_STRATEGIES), choices=FEEDBACK_STRATEGIES)
    parser.add_argument("--feedback-weight", type=float, default=None)
    parser.add_argument("--plots", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dialogue.json"))
    args = parser.parse_args(argv)

    from cli.project import Project
    from finetune.data.world import QUESTION_BANK
    from retrieval.evaluate import evaluate_dialogue_dataset
    from retrieval.judge import world_vocabulary
    from retrieval.thi import THIConfig

    project = Project(args.project)
    adapter = args.adapter or project.default_adapter()
    embedder = load_embedder(str(project.model), adapter=str(adapter) if adapter else None)
    vocabulary = world_vocabulary()
    overrides = {k: v for k, v in (("feedback_strategy", args.strategy), ("feedback_weight", args.feedback_weight))
                 if v is not None}
    config = THIConfig(mode="interactive", rounds=args.rounds, **overrides)
    started = time.time()
    world = args.world or project.world
    result = evaluate_dialogue_dataset(embedder, world, QUESTION_BANK, vocabulary, config, split=args.split,
                                       gallery_split=args.gallery_split, cache=args.cache,
                                       strategies=args.strategies, max_queries=args.queries)
    result["seconds"] = round(time.time() - started, 1)
    result["config"] = {"project": str(args.project), "world": str(world), "adapter": str(adapter),
                        "thi": vars(config)}

    console.print(rounds_table(f"dialogue rounds ({result['queries']} queries, gallery {result['gallery']}, "
                               f"{args.cache} cache {result['cache_accuracy']:.0f} % right)",
                               {LABELS[v]: r for v, r in result["variants"].items()}
                               | {"(a) not listening": result["no_listen"]}))
    console.print(rounds_table(f"(b) by feedback strategy (weight {config.feedback_weight})",
                               result["strategies"]))
    nl = result["no_listen"]
    console.print(f"questions asked: {nl['questions_asked']} without listening, of which "
                  f"{nl['questions_redundant']} the description had answered; listening asks "
                  f"{result['variants']['questions']['questions_asked']} (redundant "
                  f"{result['variants']['questions']['questions_redundant']})")
    console.print(misses_line(result["variants"]["questions"]))
    if args.plots:
        result["plot"] = str(plot(result, args.plots))
        console.print(f"wrote {result['plot']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**result, "machine": platform.platform(),
                                    "threads": os.environ.get("OMP_NUM_THREADS")}, indent=2, default=str))
    console.print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

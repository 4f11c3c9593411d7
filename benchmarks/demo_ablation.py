"""The demo's stage-1 recipe against variants of it, on the demo's own world and held-out people.

    OMP_NUM_THREADS=2 python benchmarks/demo_ablation.py --project DEMO_PROJECT [--variants NAME ...]

Reuses a finished `lineup demo` project (its world/ and model/, the shipped base) and trains stage 1 once per
variant: `recipes/demo-stage1.yaml` with a few values overridden. Each is evaluated on the test split (the
people the training never saw): text→image, image→image and composed retrieval. Runs already finished in
--work are reused, so an interrupted benchmark continues. Prints a table and writes
benchmarks/results/demo_ablation.json (with the demo's own stage 1, read from the project's eval report).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.config import RECIPES, TrainConfig  # noqa: E402

VARIANTS: dict[str, dict] = {
    # the recipe before the 800-person world: 8 people (16 images) a step for 420 steps
    "8 people/step, 420 steps": {"ids_per_batch": 8, "max_steps": 420},
    # the last token's state instead of the mean of the input's own tokens (`EmbedderConfig.pooling`)
    "24 people/step, 300 steps, last-token pooling": {"pooling": "last"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True, help="a finished `lineup demo` project folder")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), help="variant names (default: all)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/lineup-demo-ablation"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo_ablation.json")
    args = ap.parse_args()
    from finetune.train import train
    from mllm_embed import load_embedder
    from retrieval.evaluate import evaluate_dataset

    world, model = args.project / "world", args.project / "model"

    def save() -> None:
        args.out.write_text(json.dumps({"command": f"OMP_NUM_THREADS=2 python benchmarks/demo_ablation.py --project "
                                                   f"{args.project}", "world": str(world), "rows": rows}, indent=2))

    rows: dict[str, dict] = json.loads(args.out.read_text())["rows"] if args.out.exists() else {}
    demo_eval = args.project / "reports" / "eval.json"
    if demo_eval.exists():
        rows["demo recipe: 24 people/step, 300 steps"] = json.loads(
            demo_eval.read_text())["stage1"]
    for name in args.variants:
        if name in rows:
            continue
        started = time.time()
        out = args.work / f"variant-{list(VARIANTS).index(name)}"
        cfg = TrainConfig.from_recipe(RECIPES / "demo-stage1.yaml", "stage1").with_overrides(
            {"base_model": str(model), "data": str(world), "output_dir": str(out), **VARIANTS[name]})
        adapter = train("stage1", cfg)
        rows[name] = {**evaluate_dataset(load_embedder(model, adapter=adapter), world, ("t2i", "i2i", "composed")),
                      "seconds": round(time.time() - started, 1)}
        save()
    table = Table(title="demo stage 1, held-out people (test split)")
    for col in ("stage-1 recipe", "t2i R1", "t2i mAP", "i2i mAP", "composed id R@1", "exact R@10"):
        table.add_column(col, justify="left" if col == "stage-1 recipe" else "right")
    for name, r in rows.items():
        table.add_row(name, *(f"{v:.1f}" for v in (r["t2i"]["R1"], r["t2i"]["mAP"], r["i2i"]["mAP"],
                                                    r["composed"]["R@1"], r["composed"]["exact_R@10"])))
    Console().print(table)
    save()


if __name__ == "__main__":
    main()

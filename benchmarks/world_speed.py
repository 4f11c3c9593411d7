"""How fast the synthetic world renders on one core: rendering alone, and the full `generate_world`
(rendering + PNG writing + captions + noisy captions + VQA + triplets).

    OMP_NUM_THREADS=1 python benchmarks/world_speed.py [--identities 100] [--images-per-id 6]

Prints a table and writes benchmarks/results/world_speed.json. Target: >= 200 images/s at 256x128.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.data.render import make_style, render  # noqa: E402
from finetune.data.world import WorldConfig, generate_world, sample_attributes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=100)
    ap.add_argument("--images-per-id", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3, help="best of N runs")
    args = ap.parse_args()
    cfg = WorldConfig(identities=args.identities, images_per_id=args.images_per_id, seed=0)
    n = cfg.identities * cfg.images_per_id

    rng = np.random.default_rng(0)
    people = [sample_attributes(rng) for _ in range(cfg.identities)]
    styles = [make_style(a, rng) for a in people]
    render_s = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for i in range(n):
            render(people[i % len(people)], styles[i % len(people)], 1 + i % 6, np.random.default_rng(i))
        render_s.append(time.perf_counter() - t0)

    gen_s = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            t0 = time.perf_counter()
            out = generate_world(Path(tmp) / f"w{r}", cfg)
            gen_s.append(time.perf_counter() - t0)
        counts = json.loads((out / "world.json").read_text())["counts"]
        png_kb = np.mean([p.stat().st_size for p in (out / "images").glob("*.png")]) / 1024

    result = {
        "images": n,
        "size": f"{cfg.height}x{cfg.width}",
        "render_images_per_s": n / min(render_s),
        "generate_world_images_per_s": n / min(gen_s),
        "generate_world_seconds": min(gen_s),
        "mean_png_kb": float(png_kb),
        "counts": counts,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "repeats": args.repeats,
    }
    table = Table(title=f"Synthetic world speed ({n} images, {result['size']}, best of {args.repeats}, one core)")
    table.add_column("stage")
    table.add_column("images/s", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row("render only (PIL drawing + photometrics)", f"{result['render_images_per_s']:.0f}",
                  f"{min(render_s):.2f}")
    table.add_row("generate_world (render + PNG + text + triplets + VQA)",
                  f"{result['generate_world_images_per_s']:.0f}", f"{min(gen_s):.2f}")
    console = Console()
    console.print(table)
    console.print(f"mean PNG {png_kb:.1f} KB; {counts['triplets']} triplets, {counts['vqa']} VQA pairs, "
                  f"{counts['noisy_captions']} noisy captions")
    dest = Path(__file__).resolve().parent / "results" / "world_speed.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {dest}")


if __name__ == "__main__":
    main()

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
    render_s, render_cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            render(people[i % len(people)], styles[i % len(people)], 1 + i % 6, np.random.default_rng(i))
        render_s.append(time.perf_counter() - t0)
        render_cpu.append(time.process_time() - c0)

    gen = {}  # where -> (best wall s, best cpu s)
    places = {"disk": None} | ({"tmpfs": "/dev/shm"} if Path("/dev/shm").is_dir() else {})
    for where, base in places.items():
        walls, cpus = [], []
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            for r in range(args.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                out = generate_world(Path(tmp) / f"w{r}", cfg)
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            counts = json.loads((out / "world.json").read_text())["counts"]
            png_kb = np.mean([p.stat().st_size for p in (out / "images").glob("*.png")]) / 1024
        gen[where] = (min(walls), min(cpus))

    result = {
        "images": n,
        "size": f"{cfg.height}x{cfg.width}",
        "render_images_per_s": n / min(render_s),
        "render_images_per_cpu_s": n / min(render_cpu),
        **{f"generate_world_{w}_images_per_s": n / v[0] for w, v in gen.items()},
        **{f"generate_world_{w}_images_per_cpu_s": n / v[1] for w, v in gen.items()},
        **{f"generate_world_{w}_seconds": v[0] for w, v in gen.items()},
        "load_average_1min": os.getloadavg()[0],
        "mean_png_kb": float(png_kb),
        "counts": counts,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "repeats": args.repeats,
    }
    table = Table(title=f"Synthetic world speed ({n} images, {result['size']}, best of {args.repeats}, one core)")
    table.add_column("stage")
    table.add_column("images/s (wall)", justify="right")
    table.add_column("images/CPU-s", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row("render only (PIL drawing + photometrics)", f"{result['render_images_per_s']:.0f}",
                  f"{result['render_images_per_cpu_s']:.0f}", f"{min(render_s):.2f}")
    for where, (wall, cpu) in gen.items():
        table.add_row(f"generate_world to {where} (render + PNG + captions + triplets + VQA)", f"{n / wall:.0f}",
                      f"{n / cpu:.0f}", f"{wall:.2f}")
    console = Console()
    console.print(table)
    console.print(f"load average {result['load_average_1min']:.1f} (wall numbers suffer on a shared machine); "
                  f"mean PNG {png_kb:.1f} KB; {counts['triplets']} triplets, {counts['vqa']} VQA pairs, "
                  f"{counts['noisy_captions']} noisy captions")
    dest = Path(__file__).resolve().parent / "results" / "world_speed.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {dest}")


if __name__ == "__main__":
    main()

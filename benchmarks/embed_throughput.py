"""Embedder throughput vs a bare `processor(...)` + `model(**batch)` loop on the same inputs.

    OMP_NUM_THREADS=1 python benchmarks/embed_throughput.py [--base DIR] [--world DIR] [--n 64] [--size test]

Without --base/--world it generates a small world and builds a `--size` tiny base (random weights: speed
does not depend on training). Prints a table and writes benchmarks/results/embed_throughput.json.
Target: embedder overhead <= 1.5x the bare loop (the bare loop does no prompts, sorting, pooling or
normalisation). Times are the best of --repeats runs; CPU seconds are reported too since the machine
may be shared.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.data import load_split  # noqa: E402
from mllm_embed import load_embedder  # noqa: E402
from mllm_embed.embedder import load_image  # noqa: E402
from finetune.data.world import world_texts  # noqa: E402
from mllm_embed.tiny import build_tiny_base  # noqa: E402


def best(fn, repeats):
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="model folder (default: build one)")
    ap.add_argument("--world", type=Path, help="world folder (default: generate one)")
    ap.add_argument("--size", default="test", help="tiny base size when building one")
    ap.add_argument("--n", type=int, default=64, help="images and texts to embed")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "embed_throughput.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lineup-embed-bench-"))
    world = args.world
    if world is None:
        from finetune.data.world import WorldConfig, generate_world

        world = generate_world(tmp / "world", WorldConfig(identities=max(8, args.n // 4), images_per_id=4, seed=0))
    base = args.base or build_tiny_base(world_texts(world), tmp / "base", size=args.size)
    rows = load_split(world, None)[: args.n]
    paths = [r.image for r in rows]
    texts = [r.captions[0] for r in rows]

    emb = load_embedder(base, device="cpu")
    model, processor, bs = emb.model, emb.processor, args.batch_size
    image_prompt = emb.tokenizer.apply_chat_template(
        [{"role": "user", "content": emb.config.image_prompt}], tokenize=False, add_generation_prompt=True)
    text_prompt = emb.tokenizer.apply_chat_template(
        [{"role": "user", "content": emb.config.text_prompt.format(text="{}")}], tokenize=False,
        add_generation_prompt=True)

    @torch.no_grad()
    def bare(kind):
        for start in range(0, len(paths), bs):
            if kind == "image":
                images = [load_image(p) for p in paths[start:start + bs]]
                batch = processor(text=[image_prompt] * len(images), images=images, return_tensors="pt")
            else:
                batch = processor.tokenizer([text_prompt.format(t) for t in texts[start:start + bs]],
                                            return_tensors="pt", padding=True)
            model.model(**batch).last_hidden_state[:, -1].cpu()

    bare("image"), emb.encode_images(paths[:bs])  # warm-up
    results = {}
    for kind, ours in (("image", lambda: emb.encode_images(paths, batch_size=bs)),
                       ("text", lambda: emb.encode_text(texts, batch_size=bs))):
        wall, cpu = best(ours, args.repeats)
        bwall, bcpu = best(lambda: bare(kind), args.repeats)
        results[kind] = {"embedder_per_s": len(paths) / wall, "bare_per_s": len(paths) / bwall,
                         "overhead_wall": wall / bwall, "overhead_cpu": cpu / bcpu}

    out = {"n": len(paths), "batch_size": bs, "base": str(base), "dim": emb.dim,
           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
           "results": results, "target_overhead": 1.5}
    table = Table(title=f"Embedder throughput ({len(paths)} inputs, batch {bs}, {torch.get_num_threads()} threads)")
    for col in ("input", "embedder /s", "bare loop /s", "overhead (wall)", "overhead (cpu)"):
        table.add_column(col, justify="right")
    for kind, r in results.items():
        table.add_row(kind, f"{r['embedder_per_s']:.1f}", f"{r['bare_per_s']:.1f}", f"{r['overhead_wall']:.2f}x",
                      f"{r['overhead_cpu']:.2f}x")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

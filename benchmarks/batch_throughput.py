"""`lineup batch` throughput: queries/s through `retrieval.batch.run_batch`, split into embedding and search.

    OMP_NUM_THREADS=1 python benchmarks/batch_throughput.py --world WORLD --model BASE [--adapter DIR]

Indexes the world's images into an embedded qdrant-edge collection, writes a JSONL of ``--queries`` queries
(by default 80 % text from the world's captions, 10 % image, 10 % composed from its triplets; every tenth query
carries a camera filter and its own k), then runs ``run_batch`` on it with the embedder's encode calls and the
engine's store calls timed. For comparison it also runs the same query vectors through the store one query per
request (the loop ``run_batch`` used before it batched). Writes benchmarks/results/batch_throughput.json.
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

from mllm_embed.embedder import load_embedder  # noqa: E402
from retrieval.batch import run_batch  # noqa: E402
from retrieval.engine import SearchEngine  # noqa: E402
from retrieval.store import open_store  # noqa: E402


def timed(obj, attr: str, totals: dict, key: str) -> None:
    """Wrap obj.attr so its wall time adds up in totals[key]."""
    fn = getattr(obj, attr)

    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - t

    setattr(obj, attr, wrapper)


def write_queries(world: Path, n: int, out: Path, image_share: float, composed_share: float) -> dict:
    records = [json.loads(line) for line in (world / "annotations.jsonl").read_text().splitlines() if line]
    triplets = [json.loads(line) for line in (world / "triplets.jsonl").read_text().splitlines() if line]
    captions = [c for r in records for c in r.get("captions", [])]
    rng = np.random.default_rng(0)
    n_img, n_comp = int(n * image_share), int(n * composed_share)
    kinds = ["image"] * n_img + ["composed"] * n_comp + ["text"] * (n - n_img - n_comp)
    with out.open("w") as fh:
        for i, kind in enumerate(rng.permutation(kinds)):
            if kind == "text":
                q = {"text": captions[rng.integers(len(captions))]}
            elif kind == "image":
                q = {"image": str(world / records[rng.integers(len(records))]["image"])}
            else:
                t = triplets[rng.integers(len(triplets))]
                q = {"image": str(world / t["reference"]), "modification": t["modification"]}
            if i % 10 == 0:
                q.update(filter={"camera_id": [int(rng.integers(0, 8)), int(rng.integers(0, 8))]}, k=5)
            fh.write(json.dumps({"id": f"q{i}", **q}) + "\n")
    return {"text": kinds.count("text"), "image": n_img, "composed": n_comp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--image-share", type=float, default=0.1)
    ap.add_argument("--composed-share", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "batch_throughput.json")
    args = ap.parse_args()
    console = Console(width=150)

    emb = load_embedder(args.model, adapter=args.adapter)
    records = [json.loads(line) for line in (args.world / "annotations.jsonl").read_text().splitlines() if line]
    for r in records:
        r["image"] = str(args.world / r["image"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = open_store(path=tmp / "index")
        engine = SearchEngine(emb, store, "gallery")
        t = time.perf_counter()
        engine.index_images(records, batch_size=args.batch_size)
        index_s = time.perf_counter() - t
        mix = write_queries(args.world, args.queries, tmp / "queries.jsonl", args.image_share, args.composed_share)
        console.log(f"gallery {len(records)} images indexed in {index_s:.1f}s; {args.queries} queries {mix}")

        totals: dict[str, float] = {}
        for attr in ("encode_text", "encode_images", "encode_composed"):
            timed(emb, attr, totals, "embed_s")
        vectors_seen: list[np.ndarray] = []
        search = engine.search_vectors

        def search_and_keep(vectors, k=10, filter=None):
            vectors_seen.append(np.asarray(vectors))
            return search(vectors, k, filter)

        engine.search_vectors = search_and_keep
        timed(engine, "search_vectors", totals, "search_s")
        calls = {"n": 0}
        store_search = store._search

        def counting(*a, **kw):
            calls["n"] += 1
            return store_search(*a, **kw)

        store._search = counting
        t = time.perf_counter()
        n = run_batch(engine, tmp / "queries.jsonl", tmp / "out.jsonl", k=10, batch_size=args.batch_size)
        total_s = time.perf_counter() - t
        out_rows, requests = sum(1 for _ in (tmp / "out.jsonl").open()), calls["n"]

        all_vectors = np.concatenate(vectors_seen)
        t = time.perf_counter()
        for v in all_vectors:  # the same searches, one store request per query
            store.search("gallery", v, 10)
        one_by_one_s = time.perf_counter() - t
        store.close()

    other_s = total_s - totals["embed_s"] - totals["search_s"]
    result = {
        "queries": n, "mix": mix, "gallery_images": len(records), "result_rows": out_rows,
        "queries_per_s": n / total_s, "total_s": total_s, "embed_s": totals["embed_s"],
        "search_s": totals["search_s"], "other_s": other_s, "store_requests": requests,
        "search_one_request_per_query_s": one_by_one_s,
        "search_speedup_batched": one_by_one_s / totals["search_s"],
        "embed_share": totals["embed_s"] / total_s, "search_share": totals["search_s"] / total_s,
    }
    table = Table(title=f"lineup batch, {n} queries, tiny model, gallery {len(records)} images")
    for col in ("queries/s", "embed s", "search s", "parse+write s", "store requests", "search s (1 request/query)"):
        table.add_column(col, justify="right")
    table.add_row(f"{result['queries_per_s']:.0f}", f"{totals['embed_s']:.1f}", f"{totals['search_s']:.2f}",
                  f"{other_s:.1f}", str(requests), f"{one_by_one_s:.2f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "OMP_NUM_THREADS=1 python benchmarks/batch_throughput.py " + " ".join(sys.argv[1:]),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": f"{platform.platform()}, {os.cpu_count()} cores shared with other jobs",
        "threads": os.environ.get("OMP_NUM_THREADS"), **result,
    }, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

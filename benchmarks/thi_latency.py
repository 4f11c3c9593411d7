"""Latency of one interactive THI round with the answer cache (question choice + rewrite + embed + re-rank).

    OMP_NUM_THREADS=1 python benchmarks/thi_latency.py [--sizes 10000 100000] [--pools 100 1000] [--model DIR]

A gallery of clustered vectors whose payloads carry cached answers to a 16-question bank is put in an
embedded Qdrant Edge collection. Each session starts from a query near one identity, and a simulated user
answers from that identity's answers. Timed per round: choosing the question (information gain over the
top-K), the text embedding of the rewritten query, and the store query + fusion. Without --model the text
encoder is a deterministic hash → vector stub (so the numbers isolate THI + Qdrant); with --model (a base
folder, e.g. the tiny base) the real MLLM embeds the rewritten query.
Prints a table and writes benchmarks/results/thi_latency.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.engine import SearchEngine  # noqa: E402
from retrieval.store import StoreConfig, open_store, point_id  # noqa: E402
from retrieval.thi import THIConfig, THISession  # noqa: E402

BANK = [{"key": f"q{i}", "question": f"question {i}?"} for i in range(16)]
VALUES = ["a", "b", "c", "d", "e"]


class HashEmbedder:
    """Text → deterministic unit vector (no model); stands in to time everything but the MLLM."""

    def __init__(self, dim: int):
        self.dim = dim
        self.config = SimpleNamespace(base_model="hash", base_fingerprint="hash")

    def encode_text(self, texts, batch_size=16, progress=None):
        out = []
        for t in texts:
            rng = np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16))
            v = rng.normal(size=self.dim).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def build(n: int, dim: int, root: Path, embedder) -> tuple[SearchEngine, list[dict]]:
    rng = np.random.default_rng(0)
    ids_n = max(1, n // 10)
    centers = rng.normal(size=(ids_n, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    answers = rng.integers(0, len(VALUES), size=(ids_n, len(BANK)))
    labels = rng.integers(0, ids_n, size=n)
    x = centers[labels] + 0.35 / np.sqrt(dim) * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cfg = StoreConfig(search_threads=1, indexing_threads=1, indexing_threshold_kb=1000, full_scan_threshold_kb=100,
                      upsert_batch=2048, hnsw_ef=128)
    store = open_store(path=root / f"thi{n}", config=cfg)
    engine = SearchEngine(embedder, store, "thi")
    store.ensure_collection("thi", dim, engine.meta)
    payloads = [{"image": f"img{i}.png", "person_id": int(p),
                 "answers": {q["key"]: VALUES[answers[p, j]] for j, q in enumerate(BANK)}}
                for i, p in enumerate(labels)]
    store.upsert("thi", [point_id(f"img{i}.png") for i in range(n)], x, payloads)
    store.optimize("thi")
    targets = [{"person_id": int(p), "answers": {q["key"]: VALUES[answers[p, j]] for j, q in enumerate(BANK)}}
               for p in rng.integers(0, ids_n, size=20)]
    return engine, targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--pools", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--model", default=None, help="embed rewritten queries with this base model folder")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "thi_latency.json")
    args = ap.parse_args()
    console = Console(width=150)
    if args.model:
        from mllm_embed import load_embedder

        embedder = load_embedder(args.model, device="cpu")
    else:
        embedder = HashEmbedder(args.dim)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            t = time.perf_counter()
            engine, targets = build(n, embedder.dim, Path(tmp), embedder)
            console.log(f"{n} points indexed in {time.perf_counter() - t:.1f}s")
            for pool in args.pools:
                start, choose, answer = [], [], []
                for target in targets:
                    t = time.perf_counter()
                    cfg = THIConfig(rounds=args.rounds, pool=pool)
                    s = THISession(engine, f"person {target['person_id']}", BANK, cfg)
                    start.append(time.perf_counter() - t)
                    for _ in range(args.rounds):
                        t = time.perf_counter()
                        q = s.next_question()
                        choose.append(time.perf_counter() - t)
                        t = time.perf_counter()
                        s.answer(q, target["answers"][q["key"]])
                        answer.append(time.perf_counter() - t)
                rnd = np.array(choose) + np.array(answer)
                rows.append({"n": n, "pool": pool, "encoder": "model" if args.model else "hash stub",
                             "start_p50_ms": 1000 * float(np.median(start)),
                             "choose_p50_ms": 1000 * float(np.median(choose)),
                             "answer_p50_ms": 1000 * float(np.median(answer)),
                             "round_p50_ms": 1000 * float(np.median(rnd)),
                             "round_p99_ms": 1000 * float(np.percentile(rnd, 99))})
            engine.store.close()
    table = Table(title="one interactive THI round (cached answers), 1 thread")
    for c in rows[0]:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()])
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": {**vars(args), "out": str(args.out)}, "machine": platform.platform(),
                                    "threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

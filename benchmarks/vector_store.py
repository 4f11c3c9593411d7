"""Vector store benchmark: Qdrant Edge (HNSW, exact, int8), qdrant-client local mode and a numpy exact scan.

    OMP_NUM_THREADS=1 python benchmarks/vector_store.py [--sizes 10000 100000] [--dim 256]

Data: clustered unit vectors shaped like identity clusters (a Gaussian mixture, ~10 images per identity);
queries are fresh samples around random identities. Per backend and size: ingest rate, single-query
p50/p99 latency, batch throughput (queries/s through one batched call), Recall@10 against the exact
top-10, resident-memory growth and on-disk size. Prints a rich table and writes
benchmarks/results/vector_store.json. One search thread and one indexing thread throughout.
qdrant-client's local mode is a pure-Python scan and runs only up to 100k points.

Runtime: ~14 min for the default 10k + 100k on 2 shared cores, almost all of it the two single-thread
HNSW builds at 100k (~280 s each). 1M vectors would need ~1 h of single-thread HNSW build per Edge
variant, so it is not in the default sizes (pass --sizes 1000000 on a free machine).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.store import StoreConfig, open_store, point_id  # noqa: E402


def clustered(n: int, dim: int, per_id: int = 10, spread: float = 0.35, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(1, n // per_id), dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = rng.integers(0, len(centers), size=n)
    x = centers[labels] + spread / np.sqrt(dim) * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), centers


def queries_near(centers: np.ndarray, n: int, spread: float = 0.5, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dim = centers.shape[1]
    q = centers[rng.integers(0, len(centers), size=n)] + spread / np.sqrt(dim) * rng.normal(size=(n, dim))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_top(x: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    out = []
    for start in range(0, len(q), 64):
        s = q[start : start + 64] @ x.T
        top = np.argpartition(-s, k, axis=1)[:, :k]
        out.append(np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), 1), 1))
    return np.concatenate(out)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def latencies(search, queries: np.ndarray) -> tuple[list, float, float]:
    times, results = [], []
    for v in queries:
        t = time.perf_counter()
        results.append(search(v))
        times.append((time.perf_counter() - t) * 1000)
    return results, float(np.percentile(times, 50)), float(np.percentile(times, 99))


def recall10(found_ids: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(t.tolist())) / 10 for f, t in zip(found_ids, truth)]))


def bench_numpy(x, q, truth) -> dict:
    mat = np.ascontiguousarray(x)
    def top10(v):
        s = mat @ v
        top = np.argpartition(-s, 10)[:10]
        return top[np.argsort(-s[top])]

    res, p50, p99 = latencies(top10, q)
    t = time.perf_counter()
    exact_top(mat, q)
    qps = len(q) / (time.perf_counter() - t)
    return {"ingest_per_s": None, "p50_ms": p50, "p99_ms": p99, "batch_qps": qps,
            "recall@10": recall10([r.tolist() for r in res], truth), "rss_mb": mat.nbytes / 2**20,
            "disk_mb": None}


def bench_store(kind: str, x, q, truth, root: Path, cfg: StoreConfig, exact_variant: bool) -> list[dict]:
    gc.collect()
    before = rss_mb()
    path = root / kind
    store = open_store(url=":memory:", config=cfg) if kind == "client-local" else open_store(path=path, config=cfg)
    ids = [point_id(i) for i in range(len(x))]
    index = {pid: i for i, pid in enumerate(ids)}
    store.ensure_collection("bench", x.shape[1], {"model": "bench"})
    t = time.perf_counter()
    store.upsert("bench", ids, x, [{"person_id": i // 10} for i in range(len(x))])
    store.optimize("bench")
    ingest = len(x) / (time.perf_counter() - t)
    mem = rss_mb() - before
    indexed = store._shard("bench").info().indexed_vectors_count if kind != "client-local" else 0
    disk = dir_mb(path) if path.exists() else None
    rows = []
    variants = [("", False)] + ([(" exact", True)] if exact_variant else [])
    for suffix, exact in variants:
        store.config.exact = exact
        res, p50, p99 = latencies(lambda v: store.search("bench", v, 10), q)
        t = time.perf_counter()
        store.search_batch("bench", q, 10)
        qps = len(q) / (time.perf_counter() - t)
        rows.append({"backend": kind + suffix, "ingest_per_s": ingest, "p50_ms": p50, "p99_ms": p99,
                     "batch_qps": qps, "recall@10": recall10([[index[h.id] for h in r] for r in res], truth),
                     "rss_mb": mem, "disk_mb": disk, "hnsw_indexed": indexed})
    store.close()
    shutil.rmtree(path, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construct", type=int, default=100)
    ap.add_argument("--ef", type=int, default=64)
    ap.add_argument("--client-max", type=int, default=100_000, help="largest size for qdrant-client local mode")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vector_store.json")
    args = ap.parse_args()

    rows = []
    console = Console(width=150)
    hnsw = dict(hnsw_m=args.m, hnsw_ef_construct=args.ef_construct, hnsw_ef=args.ef, search_threads=1,
                indexing_threads=1, indexing_threshold_kb=1000, full_scan_threshold_kb=100, upsert_batch=2048)
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            x, centers = clustered(n, args.dim)
            q = queries_near(centers, args.queries)
            truth = exact_top(x, q)
            console.log(f"{n} vectors × {args.dim}-d")
            rows.append({"n": n, "backend": "numpy exact", **bench_numpy(x, q, truth)})
            for kind, cfg, exact_variant in (
                ("edge hnsw", StoreConfig(**hnsw), True),
                ("edge hnsw int8", StoreConfig(**hnsw, quantization="int8"), False),
                ("client-local", StoreConfig(upsert_batch=2048), False),
            ):
                if kind == "client-local" and n > args.client_max:
                    continue
                t = time.perf_counter()
                for row in bench_store(kind, x, q, truth, Path(tmp), cfg, exact_variant):
                    rows.append({"n": n, **row})
                console.log(f"  {kind}: {time.perf_counter() - t:.1f}s")
            del x

    table = Table(title=f"vector store, {args.dim}-d clustered, {args.queries} queries, 1 thread")
    cols = ["n", "backend", "ingest_per_s", "p50_ms", "p99_ms", "batch_qps", "recall@10", "rss_mb", "disk_mb",
            "hnsw_indexed"]
    for c in cols:
        table.add_column(c, justify="left" if c == "backend" else "right")
    for r in rows:
        table.add_row(*["-" if r.get(c) is None else (f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]))
                        for c in cols])
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "config": {**vars(args), "out": str(args.out)}, "machine": platform.platform(),
        "threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows,
        "notes": "rss_mb: resident-memory growth while building (numpy: the array itself); edge files are "
                 "mmap'd so part of an edge collection may not count as resident. 1M: not run (see the docstring).",
    }, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

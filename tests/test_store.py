"""Both store backends behave the same: meta checks, idempotent upserts, filters, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from mllm_embed.errors import LineupError
from retrieval.store import EdgeStore, StoreConfig, open_store, point_id


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _points(n=60, d=16, seed=0):
    rng = np.random.default_rng(seed)
    vecs = _unit(rng, n, d)
    paths = [f"images/{i // 3:05d}_c{i % 3}_{i:02d}.png" for i in range(n)]
    payloads = [
        {"image": p, "person_id": i // 3, "camera_id": i % 3, "split": "test" if i % 2 else "train"}
        for i, p in enumerate(paths)
    ]
    return [point_id(p) for p in paths], vecs, payloads


@pytest.fixture(params=["edge", "memory"])
def store(request, tmp_path):
    s = open_store(path=tmp_path / "index") if request.param == "edge" else open_store(url=":memory:")
    yield s
    s.close()


def test_point_id_is_deterministic():
    assert point_id("a/b.png") == point_id("a/b.png") != point_id("a/c.png")


def test_search_filters_and_idempotent_upsert(store):
    ids, vecs, payloads = _points()
    store.ensure_collection("people", 16, {"model": "m1"})
    store.upsert("people", ids, vecs, payloads)
    store.upsert("people", ids[:20], vecs[:20], payloads[:20])  # re-ingest: no duplicates
    assert store.count("people") == 60
    assert store.count("people", {"split": "test"}) == 30

    hits = store.search("people", vecs[7], k=5)
    assert hits[0].id == ids[7] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].payload["person_id"] == 7 // 3
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    hits = store.search("people", vecs[7], k=60, filter={"camera_id": 2, "split": "train"})
    assert hits and all(h.payload["camera_id"] == 2 and h.payload["split"] == "train" for h in hits)
    assert len(hits) == sum(1 for p in payloads if p["camera_id"] == 2 and p["split"] == "train")
    hits = store.search("people", vecs[7], k=60, filter={"person_id": [1, 2]})
    assert sorted({h.payload["person_id"] for h in hits}) == [1, 2] and len(hits) == 6

    batch = store.search_batch("people", vecs[:4], k=1, with_vectors=True)
    assert [b[0].id for b in batch] == ids[:4]
    np.testing.assert_allclose(batch[2][0].vector, vecs[2], atol=1e-5)

    missing = point_id("never/indexed.png")
    assert store.existing_ids("people", ids[:3] + [missing]) == set(ids[:3])
    assert [h.id for h in store.retrieve("people", [ids[5], missing])] == [ids[5]]
    assert sorted(h.id for h in store.scroll("people", batch=7)) == sorted(ids)


def test_meta_mismatch_and_wrong_dim_raise(store):
    store.ensure_collection("people", 16, {"model": "m1", "adapter": "a"})
    store.ensure_collection("people", 16, {"model": "m1", "adapter": "a"})  # same embedder: fine
    with pytest.raises(LineupError, match="dim|16-d"):
        store.ensure_collection("people", 32, {"model": "m1", "adapter": "a"})
    with pytest.raises(LineupError, match="model"):
        store.ensure_collection("people", 16, {"model": "m2", "adapter": "a"})
    ids, vecs, payloads = _points(4, d=8)
    with pytest.raises(LineupError, match="16-d"):
        store.upsert("people", ids, vecs, payloads)
    with pytest.raises(LineupError, match="16-d"):
        store.search("people", vecs[0])
    with pytest.raises(LineupError, match="does not exist"):
        store.search("nobody", np.zeros(16, np.float32))


def test_edge_persists_and_reopens_with_hnsw_and_quantization(tmp_path):
    ids, vecs, payloads = _points(300, d=16, seed=1)
    cfg = StoreConfig(hnsw_m=8, hnsw_ef_construct=32, quantization="int8", full_scan_threshold_kb=1,
                      indexing_threshold_kb=1)
    with EdgeStore(tmp_path / "idx", cfg) as s:
        s.ensure_collection("c", 16, {"model": "m"})
        s.upsert("c", ids, vecs, payloads)
        s.optimize("c")
        assert s._shard("c").info().indexed_vectors_count == 300  # the HNSW graph was built
    with open_store(path=tmp_path / "idx", config=cfg) as s:
        assert s.get_meta("c") == {"model": "m", "dim": 16}
        assert s.count("c") == 300
        exact = np.argsort(-(vecs @ vecs[11]))[:10]
        hits = s.search("c", vecs[11], k=10)
        assert hits[0].id == ids[11]
        assert len({h.id for h in hits} & {ids[i] for i in exact}) >= 8  # approximate (HNSW + int8)
        with pytest.raises(LineupError, match="model"):
            s.ensure_collection("c", 16, {"model": "other"})


def test_open_store_arguments():
    with pytest.raises(LineupError, match="not both"):
        open_store(path="x", url="http://localhost:6333")
    with pytest.raises(LineupError, match="--index"):
        open_store()
    with pytest.raises(ValueError, match="quantization"):
        StoreConfig(quantization="int4")

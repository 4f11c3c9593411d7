"""Both store backends behave the same: meta checks, idempotent upserts, filters, persistence."""

from __future__ import annotations

import numpy as np
import pytest
from _env import child_env

from mllm_embed.errors import LineupError
from retrieval.store import DEFERRED_FILE, INDEXED_FIELDS, EdgeStore, StoreConfig, open_store, point_id


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
    with pytest.raises(LineupError, match="--qdrant-path"):
        open_store()
    with pytest.raises(ValueError, match="quantization"):
        StoreConfig(quantization="int4")
    with pytest.raises(ValueError, match="hnsw_m"):
        StoreConfig(hnsw_m=-1)
    with pytest.raises(ValueError, match="filter_scan_kb"):
        StoreConfig(filter_scan_kb=-1)


def test_search_batch_takes_one_k_and_filter_per_query(store):
    ids, vecs, payloads = _points()
    store.ensure_collection("people", 16, {"model": "m1"})
    store.bulk_ingest("people", ids, vecs, payloads)
    filters = [None, {"camera_id": 1}, {"split": "train", "person_id": [4, 5, 6]}]
    found = store.search_batch("people", vecs[[2, 2, 2]], k=[3, 60, 60], filter=filters)
    assert len(found[0]) == 3 and found[0][0].id == ids[2]
    assert len(found[1]) == 20 and all(h.payload["camera_id"] == 1 for h in found[1])
    want = {ids[i] for i, p in enumerate(payloads) if p["split"] == "train" and p["person_id"] in (4, 5, 6)}
    assert {h.id for h in found[2]} == want
    for flt, hits in zip(filters, found):  # each list equals the same query run alone
        assert [h.id for h in hits] == [h.id for h in store.search("people", vecs[2], len(hits), flt)]
    with pytest.raises(ValueError, match="3 queries"):
        store.search_batch("people", vecs[:3], k=[1, 2])


def test_bulk_ingest_fills_gaps_and_checks_nothing_when_empty(store, monkeypatch):
    """A load into an empty collection skips the existence checks; into a collection holding a scattered part of
    the ids it adds exactly the missing points, each with its own vector and payload."""
    ids, vecs, payloads = _points(90)
    store.config.upsert_batch = 16
    store.ensure_collection("people", 16, {"model": "m1"})
    checked = []
    real_existing = store.existing_ids
    monkeypatch.setattr(store, "existing_ids",
                        lambda name, chunk: checked.append(len(chunk)) or real_existing(name, chunk))
    held = [i for i in range(90) if i % 3 == 0 or 40 <= i < 57]
    store.bulk_ingest("people", [ids[i] for i in held], vecs[held], [payloads[i] for i in held], optimize=False)
    assert checked == [] and store.count("people") == len(held)

    assert store.bulk_ingest("people", ids, vecs, payloads) == 90 - len(held)
    assert sum(checked) == 90 and store.count("people") == 90
    for hit in store.retrieve("people", ids, with_vectors=True):
        i = ids.index(hit.id)
        assert hit.payload == payloads[i]
        np.testing.assert_allclose(hit.vector, vecs[i], atol=1e-5)


def test_flat_bulk_ingest_makes_its_payload_indexes_after_the_build(tmp_path, monkeypatch):
    """A fresh load into a flat index upserts with no payload index and ends with every one of them back."""
    ids, vecs, payloads = _points(200)
    for p in payloads:
        p["attributes"] = {"bag": "backpack" if p["person_id"] % 2 else "none"}
    with EdgeStore(tmp_path / "idx", StoreConfig(hnsw_m=0, quantization="int8", upsert_batch=50)) as s:
        s.ensure_collection("c", 16, {"model": "m"})
        s.index_payload_field("c", "attributes.bag", "keyword")
        seen = []
        real_upsert = s._upsert
        monkeypatch.setattr(s, "_upsert", lambda name, *a: seen.append(set(s._shard(name).info().payload_schema))
                            or real_upsert(name, *a))
        assert s.bulk_ingest("c", ids, vecs, payloads) == 200
        assert seen == [set()] * 4  # no index maintained point by point
        assert set(s._shard("c").info().payload_schema) == {*INDEXED_FIELDS, "attributes.bag"}
        assert not (tmp_path / "idx" / "c" / DEFERRED_FILE).exists()
        hits = s.search("c", vecs[3], k=200, filter={"camera_id": 1, "attributes.bag": "backpack"})
        want = {ids[i] for i, p in enumerate(payloads) if p["camera_id"] == 1 and p["attributes"]["bag"] == "backpack"}
        assert {h.id for h in hits} == want

        s.ensure_collection("d", 16, {"model": "m"})  # a load stopped by an error gets its indexes back at once
        monkeypatch.setattr(s, "_upsert", lambda *a: (_ for _ in ()).throw(LineupError("disk full")))
        with pytest.raises(LineupError, match="disk full"):
            s.bulk_ingest("d", ids, vecs, payloads)
        assert set(s._shard("d").info().payload_schema) == set(INDEXED_FIELDS)
        assert not (tmp_path / "idx" / "d" / DEFERRED_FILE).exists()


_INGEST_CHILD = """
import sys, time
import numpy as np
from retrieval.store import StoreConfig, open_store, point_id

root, n, hnsw_m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(3)
vecs = rng.normal(size=(n, 32)).astype(np.float32)
ids = [point_id(f"img/{i:05d}.png") for i in range(n)]
payloads = [{"image": f"img/{i:05d}.png", "person_id": i // 4, "camera_id": i % 5} for i in range(n)]
store = open_store(path=root, config=StoreConfig(upsert_batch=100, hnsw_m=hnsw_m))
store.ensure_collection("g", 32, {"model": "m"})

def progress(k):
    print(k, flush=True)
    time.sleep(0.05)  # slow enough for the parent to kill it mid-load

store.bulk_ingest("g", ids, vecs, payloads, progress=progress)
print("done", flush=True)
"""


@pytest.mark.parametrize("hnsw_m", [16, 0])
def test_bulk_ingest_resumes_after_kill_without_duplicates(tmp_path, hnsw_m):
    """A bulk load killed (SIGKILL) mid-way resumes: every point present once, with its vector and payload. A
    flat index (hnsw_m 0) loads without its payload indexes: reopening after the kill makes them again."""
    import signal
    import subprocess
    import sys

    n, root = 2000, tmp_path / "index"
    script = tmp_path / "child.py"
    script.write_text(_INGEST_CHILD)
    env = child_env()
    child = subprocess.Popen([sys.executable, str(script), str(root), str(n), str(hnsw_m)], stdout=subprocess.PIPE,
                             text=True, env=env)
    acked = 0
    for line in child.stdout:
        acked += int(line)
        if acked >= 500:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(n, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [point_id(f"img/{i:05d}.png") for i in range(n)]
    payloads = [{"image": f"img/{i:05d}.png", "person_id": i // 4, "camera_id": i % 5} for i in range(n)]
    assert (root / "g" / DEFERRED_FILE).exists() == (hnsw_m == 0)
    with open_store(path=root, config=StoreConfig(upsert_batch=100, hnsw_m=hnsw_m)) as s:
        survived = s.count("g")
        assert set(s._shard("g").info().payload_schema) == set(INDEXED_FIELDS)
        assert not (root / "g" / DEFERRED_FILE).exists()
        assert acked <= survived < n  # every acknowledged batch survived the kill (write-ahead log)
        added = s.bulk_ingest("g", ids, vecs, payloads)
        assert added == n - survived
        assert s.count("g") == n
        stored = list(s.scroll("g", with_vectors=True, batch=500))
        assert len(stored) == n and {h.id for h in stored} == set(ids)
        by_id = {h.id: h for h in stored}
        for i in (0, acked - 1, n - 1):
            np.testing.assert_allclose(by_id[ids[i]].vector, vecs[i], atol=1e-5)
            assert by_id[ids[i]].payload == payloads[i]
        assert s.search("g", vecs[1234], k=1)[0].id == ids[1234]
        assert s.bulk_ingest("g", ids, vecs, payloads) == 0  # a third run adds nothing


def test_payload_filters_use_payload_indexes_at_scale(tmp_path):
    """Filtered search on indexed payload fields keeps recall against an exact filtered scan: by scoring every
    match where the indexes estimate few (the default), and through the HNSW graph (with and without ACORN)."""
    rng = np.random.default_rng(4)
    n, d = 3000, 32
    centers = _unit(rng, n // 10, d)
    vecs = centers[np.arange(n) // 10] + 0.3 / np.sqrt(d) * rng.normal(size=(n, d)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    payloads = [{"image": f"{i}.png", "person_id": i // 10, "camera_id": i % 6, "split": "test" if i % 3 else "train",
                 "attributes": {"bag": "backpack" if i % 4 == 0 else "none"}} for i in range(n)]
    ids = [point_id(p["image"]) for p in payloads]
    cfg = StoreConfig(hnsw_m=16, hnsw_ef_construct=32, hnsw_ef=64, indexing_threshold_kb=10, full_scan_threshold_kb=10)
    with EdgeStore(tmp_path / "idx", cfg) as s:
        s.ensure_collection("g", d, {"model": "m"})
        s.index_payload_field("g", "attributes.bag", "keyword")
        with pytest.raises(LineupError, match="kind"):
            s.index_payload_field("g", "attributes.bag", "colour")
        assert s.bulk_ingest("g", ids, vecs, payloads) == n
        info = s._shard("g").info()
        assert info.indexed_vectors_count == n
        assert {"person_id", "camera_id", "split", "attributes.bag"} <= set(info.payload_schema)
        assert info.payload_schema["camera_id"].points == n
        flt = {"camera_id": [1, 2], "attributes.bag": "backpack"}
        keep = np.array([p["camera_id"] in (1, 2) and p["attributes"]["bag"] == "backpack" for p in payloads])
        queries = vecs[rng.choice(n, 40, replace=False)]

        def recall() -> float:
            found, got = s.search_batch("g", queries, k=10, filter=flt), []
            for q, hits in zip(queries, found):
                assert all(h.payload["camera_id"] in (1, 2) and h.payload["attributes"]["bag"] == "backpack"
                           for h in hits)
                scores = np.where(keep, vecs @ q, -np.inf)
                truth = {ids[i] for i in np.argsort(-scores)[:10]}
                got.append(len(truth & {h.id for h in hits}) / 10)
            return float(np.mean(got))

        # ~250 matches: few enough for the default filter_scan_kb, so every match is scored (exact)
        assert s._scan_filtered("g", flt) and not s._scan_filtered("g", None)
        assert recall() == 1.0
        s.config.filter_scan_kb = 0  # the graph's own filtered search (payload-index links), then with ACORN
        assert not s._scan_filtered("g", flt)
        assert recall() >= 0.9
        s.config.acorn = True
        assert recall() >= 0.9


def test_filtered_search_on_binary_codes_scans_floats(tmp_path):
    """A binary flat index ranks filtered matches on floats by default (the scan ignores the 1-bit codes)."""
    rng = np.random.default_rng(5)
    n, d = 2000, 64
    vecs = _unit(rng, n, d)
    payloads = [{"image": f"{i}.png", "person_id": i, "camera_id": i % 6, "split": "test"} for i in range(n)]
    ids = [point_id(p["image"]) for p in payloads]
    cfg = StoreConfig(hnsw_m=0, quantization="binary", oversampling=1.0, indexing_threshold_kb=10,
                      full_scan_threshold_kb=10)
    with EdgeStore(tmp_path / "idx", cfg) as s:
        s.ensure_collection("g", d, {"model": "m"})
        s.bulk_ingest("g", ids, vecs, payloads)
        queries = _unit(rng, 20, d)
        keep = np.arange(n) % 6 == 1
        found = s.search_batch("g", queries, k=10, filter={"camera_id": 1})
        for q, hits in zip(queries, found):
            truth = [ids[i] for i in np.argsort(-np.where(keep, vecs @ q, -np.inf))[:10]]
            assert [h.id for h in hits] == truth


def test_background_build_keeps_searches_going(tmp_path):
    """build_in_background: exact-scan searches work while a child process builds the HNSW graph on a copy;
    writes are refused until wait() swaps the indexed copy in."""
    ids, vecs, payloads = _points(3000, d=32, seed=5)
    cfg = StoreConfig(hnsw_m=16, hnsw_ef_construct=64, indexing_threshold_kb=10, full_scan_threshold_kb=10)
    with EdgeStore(tmp_path / "idx", cfg) as s:
        s.ensure_collection("g", 32, {"model": "m"})
        s.bulk_ingest("g", ids, vecs, payloads, optimize=False)
        assert s._shard("g").info().indexed_vectors_count == 0
        build = s.build_in_background("g")
        assert s.search("g", vecs[17], k=1)[0].id == ids[17]  # served by exact scan meanwhile
        assert not build.done()  # (the child has not even finished importing the engine yet)
        with pytest.raises(LineupError, match="background"):
            s.upsert("g", ids[:1], vecs[:1], payloads[:1])
        build.wait()
        info = s._shard("g").info()
        assert info.indexed_vectors_count == 3000 and s.count("g") == 3000
        assert [b[0].id for b in s.search_batch("g", vecs[:50], k=1)] == ids[:50]
        assert not (tmp_path / "idx" / "g" / "shard.building").exists()
        s.upsert("g", ids[:1], vecs[:1], payloads[:1])  # writable again

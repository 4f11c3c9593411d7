"""Batch queries in JSONL / CSV / parquet: right person first, one row per rank, broken lines named."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _retrieval_fakes import FakeEmbedder, caption, make_gallery

from mllm_embed.errors import LineupError
from retrieval.batch import run_batch
from retrieval.engine import SearchEngine
from retrieval.store import open_store


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    records, attrs = make_gallery(root / "imgs", identities=12, per_id=3)
    emb = FakeEmbedder(attrs)
    engine = SearchEngine(emb, open_store(url=":memory:"), "g")
    engine.index_images(records)
    queries = [
        {"id": "t5", "text": caption(records[15].attributes), "k": 3},
        {"id": "i2", "image": "imgs/" + records[6].image.split("/")[-1], "filter": {"camera_id": 1}},
        {"id": "c0", "image": records[0].image, "modification": "same person"},
    ]
    return root, engine, queries


def _read(path):
    if path.suffix == ".jsonl":
        return [json.loads(x) for x in path.read_text().splitlines()]
    if path.suffix == ".csv":
        with path.open() as fh:
            return [dict(r, rank=int(r["rank"]), person_id=int(r["person_id"]), camera_id=int(r["camera_id"]))
                    for r in csv.DictReader(fh)]
    return pq.read_table(path).to_pylist()


def _write(path, queries):
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    elif path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["id", "text", "image", "modification", "k", "filter"])
            w.writeheader()
            w.writerows([{**q, "filter": json.dumps(q["filter"]) if "filter" in q else ""} for q in queries])
    else:
        rows = [{f: q.get(f) for f in ("id", "text", "image", "modification", "k")}
                | {"filter": json.dumps(q["filter"]) if "filter" in q else None} for q in queries]
        pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_batch_formats(setup, fmt):
    root, engine, queries = setup
    src, out = root / f"q.{fmt}", root / f"out.{fmt}"
    _write(src, queries)
    assert run_batch(engine, src, out, k=5) == 3
    rows = _read(out)
    by_q = {q: [r for r in rows if r["query_id"] == q] for q in ("t5", "i2", "c0")}
    assert [r["rank"] for r in by_q["t5"]] == [1, 2, 3]  # per-query k
    assert {r["person_id"] for r in by_q["t5"]} == {5}
    assert len(by_q["i2"]) == 5 and all(r["camera_id"] == 1 for r in by_q["i2"])  # filter applied
    assert by_q["i2"][0]["person_id"] == 2
    assert by_q["c0"][0]["person_id"] == 0


@pytest.mark.parametrize("fmt,line", [("jsonl", r"\.jsonl:3"), ("csv", r"\.csv:4"), ("parquet", r"\.parquet row 3")])
def test_broken_line_names_it_and_writes_nothing(setup, fmt, line):
    root, engine, queries = setup
    src, out = root / f"bad.{fmt}", root / f"bad_out.{fmt}"
    _write(src, queries[:2] + [{"id": "x", "modification": "no image given"}])
    with pytest.raises(LineupError, match=f"{line}: 'modification' needs an 'image'"):
        run_batch(engine, src, out)
    assert not out.exists()


def test_invalid_json_and_fields(setup):
    root, engine, _ = setup
    src = root / "broken.jsonl"
    src.write_text('{"text": "man"}\n{"text": "woman"\n')
    with pytest.raises(LineupError, match=r"broken.jsonl:2: not valid JSON"):
        run_batch(engine, src, root / "o.jsonl")
    src.write_text('{"text": "man", "k": 0}\n')
    with pytest.raises(LineupError, match=r"broken.jsonl:1: k=0 must be an integer from 1 to"):
        run_batch(engine, src, root / "o.jsonl")
    src.write_text('{"txt": "man"}\n')
    with pytest.raises(LineupError, match=r"unknown field\(s\) \['txt'\]"):
        run_batch(engine, src, root / "o.jsonl")
    with pytest.raises(LineupError, match="unknown format"):
        run_batch(engine, src, root / "o.xlsx")

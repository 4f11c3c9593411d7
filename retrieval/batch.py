"""Batch queries: a JSONL / CSV / parquet file of queries in, ranked results out (format from the suffix).

Query fields: ``id`` (optional, defaults to the line/row number), ``text``, ``image``, ``modification``,
``k`` (optional), ``filter`` (optional dict; a JSON string in CSV). A query is text (``text``), image
(``image``) or composed (``image`` + ``modification``). Relative image paths are resolved against the
query file's folder.

Every line is validated before anything runs: one broken line (bad JSON, not UTF-8, a missing image, a
filter on a field that is not stored, a ``k`` that is no integer in 1..MAX_K) raises a ``LineupError`` naming
FILE:LINE, and no output is written — so a fixed file can simply be run again. Queries are embedded in one
batch per kind, then searched in one store request per 1,024 queries.

Results are one row per (query, rank): ``query_id, rank, score, image, person_id, camera_id, point_id``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mllm_embed.errors import LineupError
from mllm_embed.files import atomic_output, check_writable
from retrieval.engine import MAX_K, check_filter

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
RESULT_FIELDS = ["query_id", "rank", "score", "image", "person_id", "camera_id", "point_id"]
SEARCH_BATCH = 1024  # queries per store request


@dataclass
class Query:
    id: str
    kind: str  # "text" | "image" | "composed"
    text: str | None = None
    image: str | None = None
    modification: str | None = None
    k: int = 10
    filter: dict[str, Any] | None = field(default=None)


def _format(path: Path, role: str) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise LineupError(f"{role} {path}: unknown format {path.suffix!r}; use one of {sorted(FORMATS)}")
    return fmt


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; another encoding is a LineupError naming the first line that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LineupError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#x}); save the file as "
                          "UTF-8") from None


def _read_rows(path: Path) -> list[tuple[str, Any]]:
    """(location, raw row) pairs; location is 'FILE:N' (line) or 'FILE row N' (parquet) for error messages."""
    if not path.is_file():
        raise LineupError(f"queries {path}: no such file")
    fmt = _format(path, "queries")
    if fmt == "jsonl":
        rows = []
        for n, line in enumerate(_read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{n}", json.loads(line)))
            except ValueError as exc:  # JSONDecodeError; also an over-long integer literal
                raise LineupError(f"{path}:{n}: not valid JSON ({getattr(exc, 'msg', exc)}); fix or delete that "
                                  "line") from None
        return rows
    if fmt == "csv":
        try:
            return [(f"{path}:{n}", row) for n, row in enumerate(csv.DictReader(io.StringIO(_read_text(path),
                                                                                            newline="")), 2)]
        except csv.Error as exc:
            raise LineupError(f"{path}: not valid CSV ({exc})") from None
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise LineupError(f"queries {path}: cannot read parquet ({exc})") from exc
    return [(f"{path} row {n}", row) for n, row in enumerate(table.to_pylist(), 1)]


def _blank(value: Any) -> bool:
    if isinstance(value, float):
        return bool(np.isnan(value))
    return value is None or (isinstance(value, str) and not value.strip())


def _positive_int(value: Any) -> int | None:
    """An integer from 1 to MAX_K given as int, integral float or digit string; None otherwise (1e999 too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 1 <= value <= MAX_K else None


def parse_query(row: Any, where: str, path: Path, default_k: int) -> Query:
    """Validate one raw row into a Query; errors start with `where` (the file and line)."""

    def fail(msg: str) -> LineupError:
        return LineupError(f"{where}: {msg}")

    if not isinstance(row, dict):
        raise fail("expected an object with fields id/text/image/modification/k/filter")
    unknown = set(row) - {"id", "text", "image", "modification", "k", "filter"}
    if unknown:
        raise fail(f"unknown field(s) {sorted(unknown)}; allowed: id, text, image, modification, k, filter")
    text, image, mod = (None if _blank(row.get(f)) else str(row[f]) for f in ("text", "image", "modification"))
    if image is not None:
        candidate = Path(image) if Path(image).is_absolute() else path.parent / image
        if not candidate.is_file():
            raise fail(f"image {image!r} not found (relative paths are read from {path.parent})")
        image = str(candidate)
    if mod is not None and image is None:
        raise fail("'modification' needs an 'image' (the person to change)")
    if image is not None and text is not None:
        raise fail("give 'text', or 'image' (+ 'modification'), not both")
    if image is None and text is None:
        raise fail("no query: give 'text', or 'image' (+ 'modification')")
    k = default_k
    if not _blank(row.get("k")):
        k = _positive_int(row["k"])
        if k is None:
            raise fail(f"k={row['k']!r} must be an integer from 1 to {MAX_K}")
    flt = row.get("filter")
    if isinstance(flt, str):
        try:
            flt = json.loads(flt) if flt.strip() else None
        except json.JSONDecodeError as exc:
            raise fail(f"filter {flt!r} is not JSON, e.g. {{\"camera_id\": 3}}") from exc
    if flt is not None and not isinstance(flt, dict):
        raise fail(f"filter must be an object like {{\"camera_id\": 3}}, got {flt!r}")
    if isinstance(flt, dict):  # parquet structs: drop null members
        flt = {key: v for key, v in flt.items() if v is not None} or None
    try:
        flt = check_filter(flt)
    except LineupError as err:
        raise fail(str(err)) from None
    kind = "text" if text is not None else ("composed" if mod is not None else "image")
    qid = re.split(r"[: ]", where)[-1] if _blank(row.get("id")) else str(row["id"])
    return Query(qid, kind, text, image, mod, k, flt)


def load_queries(path: str | Path, default_k: int = 10) -> list[Query]:
    """Every query of the file, validated (image files exist, filters name stored fields), before any model
    work: a broken line is a LineupError naming FILE:LINE."""
    path = Path(path)
    queries = [parse_query(row, where, path, default_k) for where, row in _read_rows(path)]
    if not queries:
        raise LineupError(f"queries {path}: no queries in the file")
    return queries


def check_output(queries_path: str | Path, out_path: str | Path) -> None:
    """The results file must have a known format, be writable, and not be the queries file itself."""
    out = Path(out_path)
    _format(out, "output")
    if out.resolve() == Path(queries_path).resolve():
        raise LineupError(f"--out {out}: is the queries file; write the results to another file")
    check_writable(out, "--out")


def write_results(rows: list[dict[str, Any]], out: Path) -> None:
    """Write the result rows in the format of `out`'s suffix, atomically (the old file stays until done)."""
    fmt = _format(out, "output")
    with atomic_output(out, "--out") as tmp:
        if fmt == "jsonl":
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        elif fmt == "csv":
            with tmp.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=RESULT_FIELDS)
                writer.writeheader()
                writer.writerows(rows)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp)


def run_batch(
    engine: Any,
    queries_path: str | Path,
    out_path: str | Path,
    k: int = 10,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Run every query of ``queries_path`` through ``engine``; write ranked rows to ``out_path``.

    Returns the number of queries run. ``k`` is the default for rows without their own ``k``.
    """
    out_path = Path(out_path)
    check_output(queries_path, out_path)  # fail before any embedding work
    queries = load_queries(queries_path, default_k=k)
    emb = engine.embedder
    vectors: dict[int, np.ndarray] = {}
    for kind, encode, item in (
        ("text", emb.encode_text, lambda q: q.text),
        ("image", emb.encode_images, lambda q: q.image),
        ("composed", emb.encode_composed, lambda q: (q.image, q.modification)),
    ):
        idx = [i for i, q in enumerate(queries) if q.kind == kind]
        if idx:
            vectors.update(zip(idx, encode([item(queries[i]) for i in idx], batch_size=batch_size)))
    rows = []
    for start in range(0, len(queries), SEARCH_BATCH):  # one store round trip per SEARCH_BATCH queries
        chunk = queries[start : start + SEARCH_BATCH]
        stated = [engine.stated(q.kind, q.text if q.kind == "text" else q.modification) for q in chunk]
        found = engine.search_vectors(np.stack([vectors[start + j] for j in range(len(chunk))]),
                                      [engine.fetch_k(q.k, s) for q, s in zip(chunk, stated)],
                                      [q.filter for q in chunk])
        for q, s, hits in zip(chunk, stated, found):
            hits = engine.rerank(hits, s, q.k)
            for rank, hit in enumerate(hits, 1):
                p = hit.payload
                rows.append({"query_id": q.id, "rank": rank, "score": round(hit.score, 6), "image": p.get("image"),
                             "person_id": p.get("person_id"), "camera_id": p.get("camera_id"), "point_id": hit.id})
        if progress:
            progress(len(chunk))
    write_results(rows, out_path)
    return len(queries)

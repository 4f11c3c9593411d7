"""One vector-store interface over two Qdrant backends.

- ``EdgeStore``: qdrant-edge-py, the Rust Qdrant engine in-process (HNSW, payload indexes, quantization,
  WAL). The embedded default: ``open_store(path="index/")``. Each collection is one edge shard in
  ``path/<collection>/shard`` with its meta beside it in ``path/<collection>/lineup_meta.json``.
- ``ClientStore``: qdrant-client, for a server or cluster (``open_store(url="http://...")``) or its
  pure-Python in-memory mode (``":memory:"``, an exact scan meant for tiny tests).

Collections record what made their vectors (model, adapter, dim, prompts hash); reopening one with another
embedder raises ``LineupError`` instead of silently mixing spaces. Point ids are ``uuid5`` of the image path,
so ingests are idempotent and resumable (``existing_ids``, ``bulk_ingest``). Filters are plain dicts:
``{"camera_id": 3, "split": "test"}`` (a list value means "any of").

Bulk loads (``bulk_ingest``) write large upsert batches through the engine's write-ahead log, so every
returned batch survives a killed process and is searchable at once by exact scan of the unindexed
segments; the HNSW graph (and quantized codes) are built once, by ``optimize``, when the load ends.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mllm_embed.errors import LineupError

log = logging.getLogger(__name__)

INDEXED_FIELDS = {"person_id": "integer", "camera_id": "integer", "split": "keyword"}
FIELD_KINDS = ("integer", "keyword", "bool", "float")
META_FILE = "lineup_meta.json"
DEFERRED_FILE = "deferred_payload_indexes.json"  # the payload indexes a bulk load rebuilds when its build is done
MEMORY = ":memory:"
FEEDBACK_STRATEGIES = ("best_score", "sum_scores", "context", "discover", "naive")


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def check_collection_name(name: str) -> str:
    """A collection name is one plain folder name (letters, digits, '_', '-', '.'; not '.' or '..'; at most
    64 characters), so a store never reads or writes outside its own folder."""
    if (not isinstance(name, str) or not name or len(name) > 64 or not set(name) <= _NAME_CHARS
            or name.strip(".") == ""):
        raise LineupError(f"collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.' (no path "
                          "separators, not '.' or '..'), e.g. gallery")
    return name


def point_id(image_path: str | Path) -> str:
    """Deterministic point id of an image: uuid5 of its path string."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, str(image_path)))


@dataclass
class StoreConfig:
    """How a collection is indexed and searched (runtime choices, not part of the collection meta)."""

    hnsw_m: int = field(default=16, metadata={"help": "HNSW edges per node (0: no graph, search scans)"})
    hnsw_ef_construct: int = field(default=128, metadata={"help": "HNSW candidates while building"})
    hnsw_ef: int = field(default=128, metadata={"help": "HNSW candidates while searching"})
    exact: bool = field(default=False, metadata={"help": "exact (brute-force) search instead of HNSW"})
    quantization: str | None = field(
        default=None, metadata={"help": "None, 'int8' (scalar) or 'binary' (1 bit/dim) codes, rescored on floats"}
    )
    oversampling: float = field(default=2.0, metadata={"help": "quantized candidates per hit rescored on floats"})
    vectors_on_disk: bool = field(
        default=False, metadata={"help": "float vectors memory-mapped but not loaded into RAM when a collection opens "
                                         "(quantized codes stay in RAM): less resident memory, rescoring and exact "
                                         "scans read them from the page cache or disk (set at creation)"}
    )
    full_scan_threshold_kb: int = field(default=10_000, metadata={"help": "below this size search scans"})
    indexing_threshold_kb: int | None = field(
        default=None, metadata={"help": "segments above this size get an HNSW graph (None = Qdrant default)"}
    )
    filter_graphs: bool = field(
        default=True, metadata={"help": "extra HNSW links per indexed payload value: better filtered recall, ~2.5x "
                                        "build time with camera/split/bag indexed (Edge; set when a field is indexed)"}
    )
    filter_scan_kb: int = field(
        default=100_000, metadata={"help": "a filtered search whose matching vectors take at most this many KB scores "
                                           "them all (exact; 0 = the engine's HNSW filtering decides)"}
    )
    acorn: bool = field(default=False, metadata={"help": "filtered HNSW searches also walk 2-hop neighbours "
                                                         "(Qdrant ACORN): more recall, several times the CPU"})
    upsert_batch: int = field(default=4096, metadata={"help": "points per upsert request (one WAL record)"})
    search_threads: int | None = field(default=None, metadata={"help": "edge search threads (None = auto)"})
    indexing_threads: int = field(default=0, metadata={"help": "edge HNSW build threads (0 = auto)"})

    def __post_init__(self) -> None:
        if self.quantization not in (None, "int8", "binary"):
            raise ValueError(f"quantization must be None, 'int8' or 'binary', got {self.quantization!r}")
        if self.hnsw_m < 0:
            raise ValueError(f"hnsw_m must be >= 0, got {self.hnsw_m}")
        if self.filter_scan_kb < 0:
            raise ValueError(f"filter_scan_kb must be >= 0, got {self.filter_scan_kb}")
        for name in ("hnsw_ef_construct", "hnsw_ef", "upsert_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.oversampling < 1:
            raise ValueError(f"oversampling must be >= 1, got {self.oversampling}")


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any]
    vector: np.ndarray | None = None


def check_meta(name: str, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Raise LineupError when a collection was built by another embedder than the one given."""
    if stored.get("dim") != wanted.get("dim"):
        raise LineupError(
            f"collection '{name}' holds {stored.get('dim')}-d vectors but the embedder gives "
            f"{wanted.get('dim')}-d: use another --collection or re-index into a new one"
        )
    for key, value in wanted.items():
        if key in stored and stored[key] != value:
            raise LineupError(
                f"collection '{name}' was built with {key}={stored[key]!r}, not {value!r}: "
                "use the same model/adapter, or another --collection"
            )


class Store(ABC):
    """A set of named collections of unit vectors with payloads (cosine similarity)."""

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config or StoreConfig()
        self._dims: dict[str, int] = {}

    # --- collections -------------------------------------------------------------------------------
    def ensure_collection(self, name: str, dim: int, meta: dict[str, Any] | None = None) -> None:
        """Create the collection, or check that an existing one matches ``dim`` and ``meta``."""
        check_collection_name(name)
        wanted = {**(meta or {}), "dim": int(dim)}
        if self.has_collection(name):
            check_meta(name, self.get_meta(name), wanted)
        else:
            self._create(name, int(dim), wanted)
            log.info("created collection %s (%d-d)", name, dim)
        self._dims[name] = int(dim)

    def dim(self, name: str) -> int:
        if name not in self._dims:
            self._dims[name] = int(self.get_meta(name)["dim"])
        return self._dims[name]

    def _require(self, name: str) -> None:
        if not self.has_collection(name):
            raise LineupError(f"collection '{name}' does not exist: index images into it first (lineup index)")

    # --- points ------------------------------------------------------------------------------------
    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim(name):
            raise LineupError(
                f"vectors of shape {vectors.shape} do not fit collection '{name}' ({self.dim(name)}-d): "
                "use the embedder the collection was built with"
            )
        if not len(ids) == len(vectors) == len(payloads):
            raise ValueError(f"ids ({len(ids)}), vectors ({len(vectors)}), payloads ({len(payloads)}) differ")
        step = self.config.upsert_batch
        for start in range(0, len(ids), step):
            sl = slice(start, start + step)
            self._upsert(name, list(ids[sl]), vectors[sl], list(payloads[sl]))

    def search(
        self,
        name: str,
        vector: np.ndarray,
        k: int = 10,
        filter: dict[str, Any] | None = None,
        with_vectors: bool = False,
    ) -> list[Hit]:
        return self.search_batch(name, np.asarray(vector)[None], k, filter, with_vectors)[0]

    def search_batch(
        self,
        name: str,
        vectors: np.ndarray,
        k: int | Sequence[int] = 10,
        filter: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        with_vectors: bool = False,
    ) -> list[list[Hit]]:
        """Top-k hits of each row of ``vectors`` in one request to the engine (one round trip).

        ``k`` and ``filter`` apply to every query, or give one per query (a sequence as long as ``vectors``).
        """
        self._require(name)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim(name):
            raise LineupError(
                f"query of shape {vectors.shape} does not fit collection '{name}' ({self.dim(name)}-d): "
                "search with the embedder the collection was built with"
            )
        ks = [int(k)] * len(vectors) if np.ndim(k) == 0 else [int(x) for x in k]
        filters = [filter] * len(vectors) if filter is None or isinstance(filter, dict) else list(filter)
        if len(ks) != len(vectors) or len(filters) != len(vectors):
            raise ValueError(f"{len(vectors)} queries but {len(ks)} k values and {len(filters)} filters")
        if min(ks, default=1) < 1:
            raise LineupError(f"k must be >= 1, got {min(ks)}")
        built: dict[str, Any] = {}  # one engine filter and search params per distinct filter of the batch
        requests = []
        for v, k, f in zip(vectors.tolist(), ks, filters):
            key = json.dumps(f, sort_keys=True, default=str)
            if key not in built:
                built[key] = self._filter(f), self._params(exact=self._scan_filtered(name, f))
            flt, params = built[key]
            requests.append(self._models().QueryRequest(query=self._nearest(v), limit=k, filter=flt, params=params,
                                                        with_payload=True, with_vector=with_vectors))
        return [[_hit(p, p.score) for p in points] for points in self._query_batch(name, requests)]

    def _scan_filtered(self, name: str, filter: dict[str, Any] | None) -> bool:
        """Whether a filtered search scores every matching point instead of walking the HNSW graph: a selective
        filter leaves the graph search few reachable matches (recall 0.64 at ef 32 for an 8 % filter on 30k
        clustered points, 1.0 by scan at 0.2 ms CPU). The payload indexes' estimate of the matches decides."""
        if not filter or not self.config.filter_scan_kb:
            return False
        budget = self.config.filter_scan_kb * 1024 // (4 * self.dim(name))
        return self._estimate(name, filter) <= budget

    def bulk_ingest(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict[str, Any]],
        progress: Callable[[int], None] | None = None,
        optimize: bool = True,
    ) -> int:
        """Load many points quickly and resumably; returns how many were added.

        Ids already stored are skipped (uuid5 ids: re-running after a kill adds only what is missing, never a
        duplicate); into an empty collection nothing is checked. The rest go in ``config.upsert_batch``-point
        upserts, each with its payload (written once, never patched afterwards), then one flush and, with
        ``optimize``, one index build for the whole load. Until that build the points are searched by exact scan.
        A fresh load that builds its index may leave the payload indexes out until the build is done
        (``_defer_payload_indexes``): filters meanwhile still match, by reading payloads.
        """
        ids = list(ids)
        if not len(ids) == len(vectors) == len(payloads):
            raise ValueError(f"ids ({len(ids)}), vectors ({len(vectors)}), payloads ({len(payloads)}) differ")
        step = self.config.upsert_batch
        deferred = False
        if self.count(name) == 0:
            todo = range(len(ids))
            deferred = optimize and len(ids) > 0 and self._defer_payload_indexes(name)
        else:
            todo = []
            for start in range(0, len(ids), step):
                chunk = ids[start : start + step]
                present = self.existing_ids(name, chunk)
                todo.extend(start + i for i, pid in enumerate(chunk) if pid not in present)
            if progress and len(todo) < len(ids):
                progress(len(ids) - len(todo))
        try:
            for start in range(0, len(todo), step):
                rows = todo[start : start + step]
                first, end = rows[0], rows[-1] + 1
                if end - first == len(rows):  # consecutive rows (every chunk of a fresh load): sliced, not gathered
                    self.upsert(name, ids[first:end], vectors[first:end], [payloads[i] for i in rows])
                else:
                    self.upsert(name, [ids[i] for i in rows], vectors[list(rows)], [payloads[i] for i in rows])
                if progress:
                    progress(len(rows))
            self.flush(name)
            if optimize and todo:
                self.optimize(name)
        finally:  # a load stopped by an error gets its payload indexes back too
            if deferred:
                self._restore_payload_indexes(name)
        return len(todo)

    def _defer_payload_indexes(self, name: str) -> bool:
        """Drop the collection's payload indexes for a fresh bulk load, remembering them so that
        ``_restore_payload_indexes`` (or, after a kill, the next open) builds them again; False: kept."""
        return False

    def _restore_payload_indexes(self, name: str) -> None: ...

    # --- backend primitives --------------------------------------------------------------------------
    @abstractmethod
    def has_collection(self, name: str) -> bool: ...

    @abstractmethod
    def _create(self, name: str, dim: int, meta: dict[str, Any]) -> None: ...

    @abstractmethod
    def get_meta(self, name: str) -> dict[str, Any]: ...

    @abstractmethod
    def _upsert(self, name: str, ids: list[str], vectors: np.ndarray, payloads: list[dict]) -> None: ...

    @abstractmethod
    def _models(self) -> Any:
        """The module of the backend's request classes (``Filter``, ``FieldCondition``, ``MatchAny``,
        ``MatchValue``, ``SearchParams``, ``QuantizationSearchParams``, ``AcornSearchParams``, ``QueryRequest``,
        ``ContextPair``): both backends take the same Qdrant shapes, so requests are built once, here."""

    @abstractmethod
    def _has_id(self, ids: list[str]) -> Any: ...

    @abstractmethod
    def _nearest(self, vector: list[float]) -> Any: ...

    @abstractmethod
    def _query_batch(self, name: str, requests: list) -> list[list]: ...

    @abstractmethod
    def count(self, name: str, filter: dict[str, Any] | None = None) -> int: ...

    @abstractmethod
    def _estimate(self, name: str, filter: dict[str, Any]) -> int:
        """The payload indexes' estimate of how many points match ``filter`` (no scan)."""

    @abstractmethod
    def _records(self, name: str, ids: list[str], with_payload: bool, with_vectors: bool) -> list: ...

    @abstractmethod
    def _scroll_page(self, name: str, offset: Any, batch: int, with_vectors: bool) -> tuple[list, Any]: ...

    def _filter(self, filter: dict[str, Any] | None, ids: Sequence[str] | None = None) -> Any:
        """Engine filter of a dict (a list value: any of), restricted to ``ids`` when given."""
        if not filter and ids is None:
            return None
        m = self._models()
        conds = [
            m.FieldCondition(key=key, match=m.MatchAny(any=list(value)) if isinstance(value, (list, tuple, set))
                             else m.MatchValue(value=value))
            for key, value in (filter or {}).items()
        ]
        return m.Filter(must=conds + ([self._has_id(list(ids))] if ids is not None else []))

    def _params(self, exact: bool = False) -> Any:
        m, cfg = self._models(), self.config
        quant = m.QuantizationSearchParams(rescore=True, oversampling=cfg.oversampling) if cfg.quantization else None
        return m.SearchParams(hnsw_ef=cfg.hnsw_ef, exact=cfg.exact or exact, quantization=quant,
                              acorn=m.AcornSearchParams(enable=True) if cfg.acorn else None)

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the collection holds."""
        if not ids:
            return set()
        return {str(r.id) for r in self._records(name, list(ids), False, False)}

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]:
        """The stored points of ``ids``, in that order (missing ids are left out)."""
        by_id = {str(r.id): _hit(r, 0.0) for r in self._records(name, list(ids), True, with_vectors)}
        return [by_id[i] for i in ids if i in by_id]

    def scroll(self, name: str, with_vectors: bool = False, batch: int = 1024) -> Iterator[Hit]:
        """Every point of the collection, ``batch`` per request."""
        offset = None
        while True:
            records, offset = self._scroll_page(name, offset, batch, with_vectors)
            yield from (_hit(r, 0.0) for r in records)
            if offset is None:
                return

    @abstractmethod
    def set_payload(self, name: str, id: str, payload: dict[str, Any]) -> None:
        """Merge ``payload`` keys into one point's payload."""

    def index_payload_field(self, name: str, key: str, kind: str = "keyword") -> None:
        """Create a payload index on ``key`` (a dotted path such as ``attributes.bag`` works) so filters on it
        stay fast and filtered HNSW search keeps its recall. ``kind``: integer, keyword, bool or float."""
        self._require(name)
        if kind not in FIELD_KINDS:
            raise LineupError(f"payload index kind {kind!r} is not one of {', '.join(FIELD_KINDS)}")
        self._index_field(name, key, kind)

    @abstractmethod
    def _index_field(self, name: str, key: str, kind: str) -> None: ...

    def flush(self, name: str) -> None:
        """Make every upsert so far durable in the collection's segments (no-op where the server does it)."""

    def optimize(self, name: str) -> None:
        """Build indexes after a bulk ingest (no-op where the backend does it in the background)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- dialogue: relevance feedback, diverse top-K, payload indexes on cached answers ----------------
    def feedback_search(
        self,
        name: str,
        strategy: str,
        positives: np.ndarray,
        negatives: np.ndarray,
        k: int = 10,
        filter: dict[str, Any] | None = None,
        target: np.ndarray | None = None,
        ids: Sequence[str] | None = None,
        with_vectors: bool = False,
        with_payload: bool = True,
    ) -> list[Hit]:
        """Rank by example vectors, Qdrant's recommend family (``FEEDBACK_STRATEGIES``): ``best_score`` /
        ``sum_scores`` (recommend), ``context`` (pairs positive × negative), ``discover`` (``target`` ranked
        within the context), ``naive`` (relevance feedback around ``target``: positives score 1, negatives 0).
        ``ids`` restricts the search to those points (exact scores for a candidate pool)."""
        self._require(name)
        if strategy not in FEEDBACK_STRATEGIES:
            raise LineupError(f"unknown feedback strategy {strategy!r}; valid: {', '.join(FEEDBACK_STRATEGIES)}")
        pos = np.asarray(positives, dtype=np.float32).reshape(-1, self.dim(name))
        neg = np.asarray(negatives, dtype=np.float32).reshape(-1, self.dim(name))
        if strategy in ("context", "discover", "naive") and (not len(pos) or not len(neg)):
            raise LineupError(f"feedback strategy {strategy!r} needs a positive and a negative example")
        if strategy in ("discover", "naive") and target is None:
            raise LineupError(f"feedback strategy {strategy!r} needs a target vector (the running query)")
        if not len(pos) and not len(neg):
            raise LineupError("feedback needs at least one example")
        P, N = pos.tolist(), neg.tolist()
        pairs = [self._models().ContextPair(positive=p, negative=n) for p in P for n in N]
        target = None if target is None else np.asarray(target, np.float32).tolist()
        return self._feedback(name, strategy, P, N, pairs, k, self._filter(filter, ids), target, with_vectors,
                              with_payload)

    def diverse_search(self, name: str, vector: np.ndarray, k: int = 10, diversity: float = 0.5,
                       candidates: int = 100, filter: dict[str, Any] | None = None) -> list[Hit]:
        """Top ``k`` by maximal marginal relevance over the ``candidates`` nearest (Qdrant ``Mmr``)."""
        self._require(name)
        return self._diverse(name, np.asarray(vector, dtype=np.float32), k, diversity, candidates, filter)

    @abstractmethod
    def _feedback(self, name, strategy, P, N, pairs, k, flt, target, with_vectors, with_payload) -> list[Hit]:
        """Backend query of ``feedback_search``: P / N example lists, pairs their context pairs, flt the engine
        filter (ids included), target a list or None."""

    @abstractmethod
    def _diverse(self, name, vector, k, diversity, candidates, filter) -> list[Hit]: ...


# =================================================================================================
# qdrant-edge-py (embedded)
# =================================================================================================
class EdgeStore(Store):
    def __init__(self, path: str | Path, config: StoreConfig | None = None) -> None:
        super().__init__(config)
        self.root = Path(path)
        if self.root.exists() and not self.root.is_dir():
            raise LineupError(f"index path {self.root} is a file: pass a folder for --qdrant-path")
        self.root.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, Any] = {}
        self._building: dict[str, BackgroundBuild] = {}

    def _meta_path(self, name: str) -> Path:
        return self.root / check_collection_name(name) / META_FILE

    def has_collection(self, name: str) -> bool:
        return self._meta_path(name).exists()

    def get_meta(self, name: str) -> dict[str, Any]:
        self._require(name)
        return json.loads(self._meta_path(name).read_text())

    def _edge_config(self, dim: int | None):
        import qdrant_edge as qe

        cfg = self.config
        quant = None
        if cfg.quantization == "int8":
            quant = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
        elif cfg.quantization == "binary":
            quant = qe.BinaryQuantizationConfig(always_ram=True)
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine,
                                        memory=qe.Memory.Cold if cfg.vectors_on_disk else None) if dim else None,
            hnsw_config=qe.HnswIndexConfig(
                m=cfg.hnsw_m, ef_construct=cfg.hnsw_ef_construct, full_scan_threshold=cfg.full_scan_threshold_kb,
                max_indexing_threads=cfg.indexing_threads,
            ),
            quantization_config=quant,
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=cfg.indexing_threshold_kb),
            max_search_threads=cfg.search_threads,
        )

    def _create(self, name: str, dim: int, meta: dict[str, Any]) -> None:
        import qdrant_edge as qe

        self._shards[name] = qe.EdgeShard.create(str(self.root / name / "shard"), self._edge_config(dim))
        for key, kind in INDEXED_FIELDS.items():
            self._index_field(name, key, kind)
        self._shards[name].flush()
        self._meta_path(name).write_text(json.dumps(meta, indent=2, sort_keys=True))

    def _index_field(self, name: str, key: str, kind: str) -> None:
        import qdrant_edge as qe

        graphs = self.config.filter_graphs
        # lookup only: filters are equality / any-of (``_filter``); a range index adds ~4 us to each point's upsert
        schema = {"integer": qe.IntegerIndexParams(lookup=True, range=False, enable_hnsw=graphs),
                  "keyword": qe.KeywordIndexParams(enable_hnsw=graphs), "bool": qe.BoolIndexParams(enable_hnsw=graphs),
                  "float": qe.FloatIndexParams(enable_hnsw=graphs)}[kind]
        self._shard(name).update(qe.UpdateOperation.create_field_index(key, schema))

    def _shard(self, name: str):
        if name not in self._shards:
            import qdrant_edge as qe

            self._require(name)
            try:
                self._shards[name] = qe.EdgeShard.load(str(self.root / name / "shard"))
            except Exception as exc:  # the engine locks its folder: one process per path
                raise LineupError(
                    f"cannot open collection '{name}' under {self.root} ({exc}): close the other process "
                    "using this --qdrant-path, or use a Qdrant server (--qdrant-url) for concurrent access"
                ) from exc
            if (self.root / name / DEFERRED_FILE).exists():  # a bulk load was killed before rebuilding them
                self._restore_payload_indexes(name)
        return self._shards[name]

    def _defer_payload_indexes(self, name: str) -> bool:
        """Payload indexes kept up to date point by point cost a bulk upsert ~25 of its ~120 CPU-us per point
        (the store's three plus ``attributes.bag``, 256-d), and the build makes its segment's indexes anew anyway;
        made once after the build they cost ~25 us per point in all. Not when the graph links payload values
        (``filter_graphs`` with a graph): it needs them while it builds."""
        if self.config.hnsw_m and self.config.filter_graphs:
            return False
        import qdrant_edge as qe

        kinds = {qe.PayloadSchemaType.Integer: "integer", qe.PayloadSchemaType.Keyword: "keyword",
                 qe.PayloadSchemaType.Bool: "bool", qe.PayloadSchemaType.Float: "float"}
        schema = {key: kinds.get(info.data_type) for key, info in self._shard(name).info().payload_schema.items()}
        if not schema or None in schema.values():  # an index of another kind (text, geo...) is left alone
            return False

        tmp = self.root / name / (DEFERRED_FILE + ".tmp")
        tmp.write_text(json.dumps(schema, sort_keys=True))
        tmp.replace(self.root / name / DEFERRED_FILE)  # written before any index goes
        for key in schema:
            self._shards[name].update(qe.UpdateOperation.delete_field_index(key))
        return True

    def _restore_payload_indexes(self, name: str) -> None:
        path = self.root / name / DEFERRED_FILE
        for key, kind in json.loads(path.read_text()).items():
            self._index_field(name, key, kind)
        self._shards[name].flush()
        path.unlink()

    def _models(self):
        import qdrant_edge as qe

        return qe

    def _has_id(self, ids: list[str]):
        return self._models().HasIdCondition(set(ids))

    def _nearest(self, vector: list[float]):
        return self._models().Query.Nearest(vector)

    def _query_batch(self, name: str, requests: list) -> list[list]:
        return self._shard(name).query_batch(self._models().QueryBatchRequest(requests))

    def _writable(self, name: str):
        if name in self._building:
            raise LineupError(
                f"collection '{name}' is building its index in the background: wait for it before writing"
            )
        return self._shard(name)

    def _upsert(self, name: str, ids: list[str], vectors: np.ndarray, payloads: list[dict]) -> None:
        import qdrant_edge as qe

        # UUID objects and one tolist() per batch: the binding converts them several times faster than str / rows
        points = [qe.Point(uuid.UUID(i), v, p) for i, v, p in zip(ids, vectors.tolist(), payloads)]
        self._writable(name).update(qe.UpdateOperation.upsert_points(points))

    def count(self, name: str, filter: dict[str, Any] | None = None) -> int:
        import qdrant_edge as qe

        return int(self._shard(name).count(qe.CountRequest(exact=True, filter=self._filter(filter))))

    def _estimate(self, name: str, filter: dict[str, Any]) -> int:
        import qdrant_edge as qe

        return int(self._shard(name).count(qe.CountRequest(exact=False, filter=self._filter(filter))))

    def _records(self, name: str, ids: list[str], with_payload: bool, with_vectors: bool) -> list:
        return self._shard(name).retrieve(ids, with_payload=with_payload, with_vector=with_vectors)

    def _scroll_page(self, name: str, offset: Any, batch: int, with_vectors: bool) -> tuple[list, Any]:
        import qdrant_edge as qe

        return self._shard(name).scroll(
            qe.ScrollRequest(offset=offset, limit=batch, with_payload=True, with_vector=with_vectors)
        )

    def set_payload(self, name: str, id: str, payload: dict[str, Any]) -> None:
        import qdrant_edge as qe

        self._writable(name).update(qe.UpdateOperation.set_payload([id], payload))

    def flush(self, name: str) -> None:
        self._shard(name).flush()

    def optimize(self, name: str) -> None:
        """Build the index in this process; the engine holds the GIL meanwhile, so this process's searches wait
        (``build_in_background`` keeps them going)."""
        shard = self._writable(name)
        shard.flush()
        shard.optimize()

    def build_in_background(self, name: str) -> "BackgroundBuild":
        """Start the index build in a child process, on a copy of the collection, and return at once.

        This process keeps searching the original meanwhile (exact scan of its unindexed segments); writes are
        refused until ``BackgroundBuild.wait()`` swaps the indexed copy in. The copy doubles the collection's
        disk use while the build runs.
        """
        shard = self._writable(name)
        shard.flush()
        src, copy = self.root / name / "shard", self.root / name / "shard.building"
        shutil.rmtree(copy, ignore_errors=True)
        subprocess.run(["cp", "-r", "--sparse=always", str(src), str(copy)], check=True)  # keeps files sparse
        proc = subprocess.Popen([sys.executable, "-c", _BUILD_CHILD, str(copy)], stderr=subprocess.PIPE, text=True)
        self._building[name] = BackgroundBuild(self, name, proc, copy)
        return self._building[name]

    def _swap_in(self, name: str, copy: Path) -> None:
        shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()
        src, old = self.root / name / "shard", self.root / name / "shard.old"
        src.rename(old)
        copy.rename(src)
        shutil.rmtree(old, ignore_errors=True)
        self._building.pop(name, None)

    def close(self) -> None:
        for build in list(self._building.values()):
            build.wait()
        for shard in self._shards.values():
            shard.flush()
            shard.close()
        self._shards.clear()


    # --- dialogue -------------------------------------------------------------------------------------
    def _feedback(self, name, strategy, P, N, pairs, k, flt, target, with_vectors, with_payload):
        import qdrant_edge as qe

        if strategy == "best_score":
            query = qe.Query.RecommendBestScore(qe.RecommendQuery(P, N))
        elif strategy == "sum_scores":
            query = qe.Query.RecommendSumScores(qe.RecommendQuery(P, N))
        elif strategy == "context":
            query = qe.Query.Context(qe.ContextQuery(pairs))
        elif strategy == "discover":
            query = qe.Query.Discover(qe.DiscoverQuery(target, pairs))
        else:
            items = [qe.FeedbackItem(p, 1.0) for p in P] + [qe.FeedbackItem(n, 0.0) for n in N]
            query = qe.Query.FeedbackNaive(qe.FeedbackNaiveQuery(target, items, qe.NaiveFeedbackStrategy(1.0, 1.0, 1.0)))
        request = qe.QueryRequest(query=query, limit=k, filter=flt, params=self._params(), with_payload=with_payload,
                                  with_vector=with_vectors)
        return [_hit(p, p.score) for p in self._shard(name).query(request)]

    def _diverse(self, name, vector, k, diversity, candidates, filter):
        import qdrant_edge as qe

        request = qe.QueryRequest(query=qe.Mmr(vector.tolist(), 1.0 - diversity, max(candidates, k)), limit=k,
                                  filter=self._filter(filter), params=self._params(), with_payload=True)
        return [_hit(p, p.score) for p in self._shard(name).query(request)]

_BUILD_CHILD = """
import sys
import qdrant_edge

shard = qdrant_edge.EdgeShard.load(sys.argv[1])
shard.optimize()
shard.close()
"""


class BackgroundBuild:
    """An index build running in a child process (``EdgeStore.build_in_background``)."""

    def __init__(self, store: EdgeStore, name: str, proc: subprocess.Popen, copy: Path) -> None:
        self.store, self.name, self.proc, self.copy = store, name, proc, copy

    def done(self) -> bool:
        return self.proc.poll() is not None

    def wait(self) -> None:
        """Block until the build ends, then serve the indexed copy (raises LineupError if the build failed)."""
        err = self.proc.communicate()[1]
        if self.proc.returncode != 0:
            self.store._building.pop(self.name, None)
            shutil.rmtree(self.copy, ignore_errors=True)
            raise LineupError(f"index build of collection '{self.name}' failed: {err.strip()[-300:]}")
        self.store._swap_in(self.name, self.copy)

    def cancel(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.store._building.pop(self.name, None)
        shutil.rmtree(self.copy, ignore_errors=True)


def _hit(point: Any, score: float) -> Hit:
    vector = getattr(point, "vector", None)
    if isinstance(vector, dict):  # qdrant-client returns {"": [...]} for some configs
        vector = next(iter(vector.values()), None)
    return Hit(
        id=str(point.id),
        score=float(score),
        payload=dict(point.payload or {}),
        vector=None if vector is None else np.asarray(vector, dtype=np.float32),
    )


# =================================================================================================
# qdrant-client (server, cluster, or in-memory)
# =================================================================================================
class ClientStore(Store):
    def __init__(self, url: str, config: StoreConfig | None = None) -> None:
        super().__init__(config)
        from qdrant_client import QdrantClient

        self.url = url
        self.client = QdrantClient(location=MEMORY) if url == MEMORY else QdrantClient(url=url)

    def has_collection(self, name: str) -> bool:
        return bool(self.client.collection_exists(name))

    def get_meta(self, name: str) -> dict[str, Any]:
        self._require(name)
        info = self.client.get_collection(name)
        meta = dict(info.config.metadata or {})
        meta.setdefault("dim", info.config.params.vectors.size)
        return meta

    def _create(self, name: str, dim: int, meta: dict[str, Any]) -> None:
        from qdrant_client import models as m

        cfg = self.config
        quant = None
        if cfg.quantization == "int8":
            quant = m.ScalarQuantization(
                scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, quantile=0.99, always_ram=True)
            )
        elif cfg.quantization == "binary":
            quant = m.BinaryQuantization(binary=m.BinaryQuantizationConfig(always_ram=True))
        self.client.create_collection(
            name,
            vectors_config=m.VectorParams(size=dim, distance=m.Distance.COSINE, on_disk=cfg.vectors_on_disk or None),
            hnsw_config=m.HnswConfigDiff(
                m=cfg.hnsw_m, ef_construct=cfg.hnsw_ef_construct, full_scan_threshold=cfg.full_scan_threshold_kb
            ),
            quantization_config=quant,
            metadata=meta,
        )
        for key, kind in INDEXED_FIELDS.items():
            self._index_field(name, key, kind)

    def _index_field(self, name: str, key: str, kind: str) -> None:
        if self.url == MEMORY:  # local mode has no payload indexes (it warns and ignores them)
            return
        from qdrant_client import models as m

        schema = {"integer": m.PayloadSchemaType.INTEGER, "keyword": m.PayloadSchemaType.KEYWORD,
                  "bool": m.PayloadSchemaType.BOOL, "float": m.PayloadSchemaType.FLOAT}[kind]
        self.client.create_payload_index(name, key, field_schema=schema)

    def _models(self):
        from qdrant_client import models

        return models

    def _has_id(self, ids: list[str]):
        return self._models().HasIdCondition(has_id=ids)

    def _nearest(self, vector: list[float]):
        return vector

    def _params(self, exact: bool = False):
        return None if self.url == MEMORY else super()._params(exact)  # local mode scans, and warns on params

    def _query_batch(self, name: str, requests: list) -> list[list]:
        return [r.points for r in self.client.query_batch_points(name, requests=requests)]

    def _upsert(self, name: str, ids: list[str], vectors: np.ndarray, payloads: list[dict]) -> None:
        from qdrant_client import models as m

        points = [m.PointStruct(id=i, vector=v.tolist(), payload=p) for i, v, p in zip(ids, vectors, payloads)]
        self.client.upsert(name, points=points, wait=True)

    def count(self, name: str, filter: dict[str, Any] | None = None) -> int:
        self._require(name)
        return int(self.client.count(name, count_filter=self._filter(filter), exact=True).count)

    def _estimate(self, name: str, filter: dict[str, Any]) -> int:
        return int(self.client.count(name, count_filter=self._filter(filter), exact=False).count)

    def _records(self, name: str, ids: list[str], with_payload: bool, with_vectors: bool) -> list:
        return self.client.retrieve(name, ids=ids, with_payload=with_payload, with_vectors=with_vectors)

    def _scroll_page(self, name: str, offset: Any, batch: int, with_vectors: bool) -> tuple[list, Any]:
        return self.client.scroll(name, limit=batch, offset=offset, with_payload=True, with_vectors=with_vectors)

    def set_payload(self, name: str, id: str, payload: dict[str, Any]) -> None:
        self.client.set_payload(name, payload=payload, points=[id], wait=True)

    def close(self) -> None:
        self.client.close()


    # --- dialogue -------------------------------------------------------------------------------------
    def _feedback(self, name, strategy, P, N, pairs, k, flt, target, with_vectors, with_payload):
        from qdrant_client import models as m

        if strategy in ("best_score", "sum_scores"):
            query = m.RecommendQuery(recommend=m.RecommendInput(
                positive=P, negative=N, strategy=m.RecommendStrategy(strategy)))
        elif strategy == "context":
            query = m.ContextQuery(context=pairs)
        elif strategy == "discover":
            query = m.DiscoverQuery(discover=m.DiscoverInput(target=target, context=pairs))
        else:
            items = [m.FeedbackItem(example=p, score=1.0) for p in P] + [m.FeedbackItem(example=n, score=0.0) for n in N]
            query = m.RelevanceFeedbackQuery(relevance_feedback=m.RelevanceFeedbackInput(
                target=target, feedback=items,
                strategy=m.NaiveFeedbackStrategy(naive=m.NaiveFeedbackStrategyParams(a=1.0, b=1.0, c=1.0))))
        res = self.client.query_points(name, query=query, limit=k, query_filter=flt, with_payload=with_payload,
                                       with_vectors=with_vectors)
        return [_hit(p, p.score) for p in res.points]

    def _diverse(self, name, vector, k, diversity, candidates, filter):
        from qdrant_client import models as m

        query = m.NearestQuery(nearest=vector.tolist(), mmr=m.Mmr(diversity=diversity, candidates_limit=max(candidates, k)))
        res = self.client.query_points(name, query=query, limit=k, query_filter=self._filter(filter), with_payload=True)
        return [_hit(p, p.score) for p in res.points]

def open_store(
    path: str | Path | None = None, url: str | None = None, config: StoreConfig | None = None
) -> Store:
    """path → embedded qdrant-edge-py; url → qdrant-client server; ":memory:" (either) → in-memory client."""
    if path is not None and url is not None:
        raise LineupError("give either a store folder (--qdrant-path) or a Qdrant URL (--qdrant-url), not both")
    if MEMORY in (str(path), url):
        return ClientStore(MEMORY, config)
    if url is not None:
        return ClientStore(url, config)
    if path is None:
        raise LineupError("no vector store given: pass a store folder (--qdrant-path) or a Qdrant URL (--qdrant-url)")
    return EdgeStore(path, config)

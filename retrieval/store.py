"""One vector-store interface over two Qdrant backends.

- ``EdgeStore``: qdrant-edge-py, the Rust Qdrant engine in-process (HNSW, payload indexes, quantization,
  WAL). The embedded default: ``open_store(path="index/")``. Each collection is one edge shard in
  ``path/<collection>/shard`` with its meta beside it in ``path/<collection>/lineup_meta.json``.
- ``ClientStore``: qdrant-client, for a server or cluster (``open_store(url="http://...")``) or its
  pure-Python in-memory mode (``":memory:"``, an exact scan meant for tiny tests).

Collections record what made their vectors (model, adapter, dim, prompts hash); reopening one with another
embedder raises ``LineupError`` instead of silently mixing spaces. Point ids are ``uuid5`` of the image path,
so ingests are idempotent and resumable (``existing_ids``). Filters are plain dicts:
``{"camera_id": 3, "split": "test"}`` (a list value means "any of").
"""

from __future__ import annotations

import json
import logging
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from mllm_embed.errors import LineupError

log = logging.getLogger(__name__)

INDEXED_FIELDS = {"person_id": "integer", "camera_id": "integer", "split": "keyword"}
META_FILE = "lineup_meta.json"
MEMORY = ":memory:"
FEEDBACK_STRATEGIES = ("best_score", "sum_scores", "context", "discover", "naive")


def point_id(image_path: str | Path) -> str:
    """Deterministic point id of an image: uuid5 of its path string."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, str(image_path)))


@dataclass
class StoreConfig:
    """How a collection is indexed and searched (runtime choices, not part of the collection meta)."""

    hnsw_m: int = field(default=16, metadata={"help": "HNSW edges per node"})
    hnsw_ef_construct: int = field(default=128, metadata={"help": "HNSW candidates while building"})
    hnsw_ef: int = field(default=128, metadata={"help": "HNSW candidates while searching"})
    exact: bool = field(default=False, metadata={"help": "exact (brute-force) search instead of HNSW"})
    quantization: str | None = field(default=None, metadata={"help": "None or 'int8' scalar quantization"})
    full_scan_threshold_kb: int = field(default=10_000, metadata={"help": "below this size search scans"})
    indexing_threshold_kb: int | None = field(
        default=None, metadata={"help": "segments above this size get an HNSW graph (None = Qdrant default)"}
    )
    upsert_batch: int = field(default=512, metadata={"help": "points per upsert request"})
    search_threads: int | None = field(default=None, metadata={"help": "edge search threads (None = auto)"})
    indexing_threads: int = field(default=0, metadata={"help": "edge HNSW build threads (0 = auto)"})

    def __post_init__(self) -> None:
        if self.quantization not in (None, "int8"):
            raise ValueError(f"quantization must be None or 'int8', got {self.quantization!r}")
        for name in ("hnsw_m", "hnsw_ef_construct", "hnsw_ef", "upsert_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


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
        k: int = 10,
        filter: dict[str, Any] | None = None,
        with_vectors: bool = False,
    ) -> list[list[Hit]]:
        self._require(name)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim(name):
            raise LineupError(
                f"query of shape {vectors.shape} does not fit collection '{name}' ({self.dim(name)}-d): "
                "search with the embedder the collection was built with"
            )
        if k < 1:
            raise LineupError(f"k must be >= 1, got {k}")
        return self._search(name, vectors, k, filter, with_vectors)

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
    def _search(
        self, name: str, vectors: np.ndarray, k: int, filter: dict | None, with_vectors: bool
    ) -> list[list[Hit]]: ...

    @abstractmethod
    def count(self, name: str, filter: dict[str, Any] | None = None) -> int: ...

    @abstractmethod
    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]: ...

    @abstractmethod
    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]: ...

    @abstractmethod
    def scroll(self, name: str, with_vectors: bool = False, batch: int = 1024) -> Iterator[Hit]: ...

    @abstractmethod
    def set_payload(self, name: str, id: str, payload: dict[str, Any]) -> None:
        """Merge ``payload`` keys into one point's payload."""

    @abstractmethod
    def delete_collection(self, name: str) -> None: ...

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
        return self._feedback(name, strategy, pos, neg, k, filter, target, ids, with_vectors, with_payload)

    def diverse_search(self, name: str, vector: np.ndarray, k: int = 10, diversity: float = 0.5,
                       candidates: int = 100, filter: dict[str, Any] | None = None) -> list[Hit]:
        """Top ``k`` by maximal marginal relevance over the ``candidates`` nearest (Qdrant ``Mmr``)."""
        self._require(name)
        return self._diverse(name, np.asarray(vector, dtype=np.float32), k, diversity, candidates, filter)

    @abstractmethod
    def _feedback(self, name, strategy, pos, neg, k, filter, target, ids, with_vectors, with_payload) -> list[Hit]:
        ...

    @abstractmethod
    def _diverse(self, name, vector, k, diversity, candidates, filter) -> list[Hit]: ...

    @abstractmethod
    def create_payload_index(self, name: str, key: str, kind: str = "keyword") -> None:
        """Index payload field ``key`` ("answers.has_hat") so filters on it stay fast (idempotent)."""


# =================================================================================================
# qdrant-edge-py (embedded)
# =================================================================================================
class EdgeStore(Store):
    def __init__(self, path: str | Path, config: StoreConfig | None = None) -> None:
        super().__init__(config)
        self.root = Path(path)
        if self.root.exists() and not self.root.is_dir():
            raise LineupError(f"index path {self.root} is a file: pass a folder for --index")
        self.root.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, Any] = {}

    def _meta_path(self, name: str) -> Path:
        return self.root / name / META_FILE

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
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine) if dim else None,
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

        shard = qe.EdgeShard.create(str(self.root / name / "shard"), self._edge_config(dim))
        schema = {"integer": qe.PayloadSchemaType.Integer, "keyword": qe.PayloadSchemaType.Keyword}
        for key, kind in INDEXED_FIELDS.items():
            shard.update(qe.UpdateOperation.create_field_index(key, schema[kind]))
        shard.flush()
        self._meta_path(name).write_text(json.dumps(meta, indent=2, sort_keys=True))
        self._shards[name] = shard

    def _shard(self, name: str):
        if name not in self._shards:
            import qdrant_edge as qe

            self._require(name)
            try:
                self._shards[name] = qe.EdgeShard.load(str(self.root / name / "shard"))
            except Exception as exc:  # the engine locks its folder: one process per path
                raise LineupError(
                    f"cannot open collection '{name}' under {self.root} ({exc}): close the other process "
                    "using this --index, or use a Qdrant server (--qdrant-url) for concurrent access"
                ) from exc
        return self._shards[name]

    @staticmethod
    def _filter(filter: dict[str, Any] | None):
        if not filter:
            return None
        import qdrant_edge as qe

        conds = [
            qe.FieldCondition(
                key=key,
                match=qe.MatchAny(list(value)) if isinstance(value, (list, tuple, set)) else qe.MatchValue(value),
            )
            for key, value in filter.items()
        ]
        return qe.Filter(must=conds)

    def _upsert(self, name: str, ids: list[str], vectors: np.ndarray, payloads: list[dict]) -> None:
        import qdrant_edge as qe

        points = [qe.Point(i, v.tolist(), p) for i, v, p in zip(ids, vectors, payloads)]
        self._shard(name).update(qe.UpdateOperation.upsert_points(points))

    def _params(self):
        import qdrant_edge as qe

        quant = qe.QuantizationSearchParams(rescore=True, oversampling=2.0) if self.config.quantization else None
        return qe.SearchParams(hnsw_ef=self.config.hnsw_ef, exact=self.config.exact, quantization=quant)

    def _search(self, name, vectors, k, filter, with_vectors):
        import qdrant_edge as qe

        flt, params = self._filter(filter), self._params()
        requests = [
            qe.QueryRequest(
                query=qe.Query.Nearest(v.tolist()), limit=k, filter=flt, params=params,
                with_payload=True, with_vector=with_vectors,
            )
            for v in vectors
        ]
        results = self._shard(name).query_batch(qe.QueryBatchRequest(requests))
        return [[_hit(p, p.score) for p in res] for res in results]

    def count(self, name: str, filter: dict[str, Any] | None = None) -> int:
        import qdrant_edge as qe

        return int(self._shard(name).count(qe.CountRequest(exact=True, filter=self._filter(filter))))

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        records = self._shard(name).retrieve(list(ids), with_payload=False, with_vector=False)
        return {str(r.id) for r in records}

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]:
        records = self._shard(name).retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        by_id = {str(r.id): _hit(r, 0.0) for r in records}
        return [by_id[i] for i in ids if i in by_id]

    def scroll(self, name: str, with_vectors: bool = False, batch: int = 1024) -> Iterator[Hit]:
        import qdrant_edge as qe

        offset = None
        while True:
            records, offset = self._shard(name).scroll(
                qe.ScrollRequest(offset=offset, limit=batch, with_payload=True, with_vector=with_vectors)
            )
            yield from (_hit(r, 0.0) for r in records)
            if offset is None:
                return

    def set_payload(self, name: str, id: str, payload: dict[str, Any]) -> None:
        import qdrant_edge as qe

        self._shard(name).update(qe.UpdateOperation.set_payload([id], payload))

    def optimize(self, name: str) -> None:
        shard = self._shard(name)
        shard.flush()
        shard.optimize()

    def delete_collection(self, name: str) -> None:
        import shutil

        shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()
        self._dims.pop(name, None)
        shutil.rmtree(self.root / name, ignore_errors=True)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.flush()
            shard.close()
        self._shards.clear()


    # --- dialogue -------------------------------------------------------------------------------------
    def _feedback(self, name, strategy, pos, neg, k, filter, target, ids, with_vectors, with_payload):
        import qdrant_edge as qe

        P, N = [v.tolist() for v in pos], [v.tolist() for v in neg]
        pairs = [qe.ContextPair(p, n) for p in P for n in N]
        if strategy == "best_score":
            query = qe.Query.RecommendBestScore(qe.RecommendQuery(P, N))
        elif strategy == "sum_scores":
            query = qe.Query.RecommendSumScores(qe.RecommendQuery(P, N))
        elif strategy == "context":
            query = qe.Query.Context(qe.ContextQuery(pairs))
        elif strategy == "discover":
            query = qe.Query.Discover(qe.DiscoverQuery(np.asarray(target, np.float32).tolist(), pairs))
        else:
            items = [qe.FeedbackItem(p, 1.0) for p in P] + [qe.FeedbackItem(n, 0.0) for n in N]
            query = qe.Query.FeedbackNaive(qe.FeedbackNaiveQuery(
                np.asarray(target, np.float32).tolist(), items, qe.NaiveFeedbackStrategy(1.0, 1.0, 1.0)))
        flt = self._filter(filter)
        if ids is not None:
            flt = qe.Filter(must=[qe.HasIdCondition(set(ids))] + ([flt] if flt else []))
        request = qe.QueryRequest(query=query, limit=k, filter=flt, params=self._params(), with_payload=with_payload,
                                  with_vector=with_vectors)
        return [_hit(p, p.score) for p in self._shard(name).query(request)]

    def _diverse(self, name, vector, k, diversity, candidates, filter):
        import qdrant_edge as qe

        request = qe.QueryRequest(query=qe.Mmr(vector.tolist(), 1.0 - diversity, max(candidates, k)), limit=k,
                                  filter=self._filter(filter), params=self._params(), with_payload=True)
        return [_hit(p, p.score) for p in self._shard(name).query(request)]

    def create_payload_index(self, name: str, key: str, kind: str = "keyword") -> None:
        import qdrant_edge as qe

        schema = {"integer": qe.PayloadSchemaType.Integer, "keyword": qe.PayloadSchemaType.Keyword}[kind]
        self._shard(name).update(qe.UpdateOperation.create_field_index(key, schema))


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
        self.client.create_collection(
            name,
            vectors_config=m.VectorParams(size=dim, distance=m.Distance.COSINE),
            hnsw_config=m.HnswConfigDiff(
                m=cfg.hnsw_m, ef_construct=cfg.hnsw_ef_construct, full_scan_threshold=cfg.full_scan_threshold_kb
            ),
            quantization_config=quant,
            metadata=meta,
        )
        if self.url != MEMORY:  # local mode has no payload indexes (it warns and ignores them)
            schema = {"integer": m.PayloadSchemaType.INTEGER, "keyword": m.PayloadSchemaType.KEYWORD}
            for key, kind in INDEXED_FIELDS.items():
                self.client.create_payload_index(name, key, field_schema=schema[kind])

    @staticmethod
    def _filter(filter: dict[str, Any] | None):
        if not filter:
            return None
        from qdrant_client import models as m

        return m.Filter(
            must=[
                m.FieldCondition(
                    key=key,
                    match=m.MatchAny(any=list(value))
                    if isinstance(value, (list, tuple, set))
                    else m.MatchValue(value=value),
                )
                for key, value in filter.items()
            ]
        )

    def _upsert(self, name: str, ids: list[str], vectors: np.ndarray, payloads: list[dict]) -> None:
        from qdrant_client import models as m

        points = [m.PointStruct(id=i, vector=v.tolist(), payload=p) for i, v, p in zip(ids, vectors, payloads)]
        self.client.upsert(name, points=points, wait=True)

    def _search(self, name, vectors, k, filter, with_vectors):
        from qdrant_client import models as m

        quant = m.QuantizationSearchParams(rescore=True, oversampling=2.0) if self.config.quantization else None
        params = None  # local mode always scans exactly (and warns when given search params)
        if self.url != MEMORY:
            params = m.SearchParams(hnsw_ef=self.config.hnsw_ef, exact=self.config.exact, quantization=quant)
        flt = self._filter(filter)
        requests = [
            m.QueryRequest(
                query=v.tolist(), limit=k, filter=flt, params=params, with_payload=True, with_vector=with_vectors
            )
            for v in vectors
        ]
        responses = self.client.query_batch_points(name, requests=requests)
        return [[_hit(p, p.score) for p in r.points] for r in responses]

    def count(self, name: str, filter: dict[str, Any] | None = None) -> int:
        self._require(name)
        return int(self.client.count(name, count_filter=self._filter(filter), exact=True).count)

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        records = self.client.retrieve(name, ids=list(ids), with_payload=False, with_vectors=False)
        return {str(r.id) for r in records}

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]:
        records = self.client.retrieve(name, ids=list(ids), with_payload=True, with_vectors=with_vectors)
        by_id = {str(r.id): _hit(r, 0.0) for r in records}
        return [by_id[i] for i in ids if i in by_id]

    def scroll(self, name: str, with_vectors: bool = False, batch: int = 1024) -> Iterator[Hit]:
        offset = None
        while True:
            records, offset = self.client.scroll(
                name, limit=batch, offset=offset, with_payload=True, with_vectors=with_vectors
            )
            yield from (_hit(r, 0.0) for r in records)
            if offset is None:
                return

    def set_payload(self, name: str, id: str, payload: dict[str, Any]) -> None:
        self.client.set_payload(name, payload=payload, points=[id], wait=True)

    def delete_collection(self, name: str) -> None:
        self.client.delete_collection(name)
        self._dims.pop(name, None)

    def close(self) -> None:
        self.client.close()


    # --- dialogue -------------------------------------------------------------------------------------
    def _feedback(self, name, strategy, pos, neg, k, filter, target, ids, with_vectors, with_payload):
        from qdrant_client import models as m

        P, N = [v.tolist() for v in pos], [v.tolist() for v in neg]
        pairs = [m.ContextPair(positive=p, negative=n) for p in P for n in N]
        if strategy in ("best_score", "sum_scores"):
            query = m.RecommendQuery(recommend=m.RecommendInput(
                positive=P, negative=N, strategy=m.RecommendStrategy(strategy)))
        elif strategy == "context":
            query = m.ContextQuery(context=pairs)
        elif strategy == "discover":
            query = m.DiscoverQuery(discover=m.DiscoverInput(target=np.asarray(target).tolist(), context=pairs))
        else:
            items = [m.FeedbackItem(example=p, score=1.0) for p in P] + [m.FeedbackItem(example=n, score=0.0) for n in N]
            query = m.RelevanceFeedbackQuery(relevance_feedback=m.RelevanceFeedbackInput(
                target=np.asarray(target).tolist(), feedback=items,
                strategy=m.NaiveFeedbackStrategy(naive=m.NaiveFeedbackStrategyParams(a=1.0, b=1.0, c=1.0))))
        flt = self._filter(filter)
        if ids is not None:
            flt = m.Filter(must=[m.HasIdCondition(has_id=list(ids))] + ([flt] if flt else []))
        res = self.client.query_points(name, query=query, limit=k, query_filter=flt, with_payload=with_payload,
                                       with_vectors=with_vectors)
        return [_hit(p, p.score) for p in res.points]

    def _diverse(self, name, vector, k, diversity, candidates, filter):
        from qdrant_client import models as m

        query = m.NearestQuery(nearest=vector.tolist(), mmr=m.Mmr(diversity=diversity, candidates_limit=max(candidates, k)))
        res = self.client.query_points(name, query=query, limit=k, query_filter=self._filter(filter), with_payload=True)
        return [_hit(p, p.score) for p in res.points]

    def create_payload_index(self, name: str, key: str, kind: str = "keyword") -> None:
        if self.url == MEMORY:  # local mode has no payload indexes
            return
        from qdrant_client import models as m

        schema = {"integer": m.PayloadSchemaType.INTEGER, "keyword": m.PayloadSchemaType.KEYWORD}[kind]
        self.client.create_payload_index(name, key, field_schema=schema)


def open_store(
    path: str | Path | None = None, url: str | None = None, config: StoreConfig | None = None
) -> Store:
    """path → embedded qdrant-edge-py; url → qdrant-client server; ":memory:" (either) → in-memory client."""
    if path is not None and url is not None:
        raise LineupError("give either an index path (--index) or a Qdrant URL (--qdrant-url), not both")
    if MEMORY in (str(path), url):
        return ClientStore(MEMORY, config)
    if url is not None:
        return ClientStore(url, config)
    if path is None:
        raise LineupError("no vector store given: pass an index folder (--index) or a Qdrant URL (--qdrant-url)")
    return EdgeStore(path, config)

"""SearchEngine: an embedder plus a store collection — resumable ingest and text / image / composed search."""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from finetune.data.records import PersonImage
from mllm_embed.errors import LineupError
from retrieval.dialogue import normalize_answer
from retrieval.store import Hit, Store, point_id

log = logging.getLogger(__name__)

Progress = Callable[[int], None] | None
PAYLOAD_FIELDS = ("person_id", "camera_id", "split")


def embedder_meta(embedder: Any) -> dict[str, Any]:
    """What made a collection's vectors (checked on reopen): the base's architecture fingerprint, the content
    hashes of the base's and the adapter's weights (a copied project keeps its collections; other weights at
    the same path are refused), the prompts' hash and the dimension."""
    from mllm_embed.files import model_sha256, weights_sha256

    cfg = getattr(embedder, "config", None)
    prompts = [getattr(cfg, f, "") for f in ("common_prompt", "image_prompt", "text_prompt", "composed_prompt")]
    adapter, base = getattr(embedder, "adapter", None), getattr(embedder, "base", None)
    return {
        "model": getattr(cfg, "base_fingerprint", "") or getattr(cfg, "base_model", "") or type(embedder).__name__,
        "base_sha256": model_sha256(str(base)) if base else "",
        "adapter_sha256": weights_sha256(adapter) if adapter else "",
        "prompts": hashlib.sha1(json.dumps(prompts).encode()).hexdigest()[:12],
        "dim": int(embedder.dim),
        "prompt_style": getattr(cfg, "prompt_style", "") or "",
    }


# Payload fields a filter may name: exact ones with their type, and the per-attribute / per-question families.
FILTER_FIELDS: dict[str, type] = {"person_id": int, "camera_id": int, "split": str, "image": str}
FILTER_PREFIXES = ("attributes.", "answers.")
MAX_K = 1_000_000
_INT64 = 2**63 - 1


def filter_help() -> str:
    return ", ".join([*FILTER_FIELDS, *(p + "NAME" for p in FILTER_PREFIXES)])


def check_filter(filter: dict[str, Any] | None) -> dict[str, Any] | None:
    """A payload filter ``{field: value | [values]}`` checked against the fields Lineup stores; anything else
    (an unknown field, a range like ``{"gt": 1}``, an int past int64) is a LineupError naming the problem,
    never an empty result. Returns the filter (None when empty)."""
    if not filter:
        return None
    if not isinstance(filter, dict):
        raise LineupError(f"filter {filter!r}: expected an object like {{\"camera_id\": 3}}")
    for key, value in filter.items():
        prefix = next((p for p in FILTER_PREFIXES if str(key).startswith(p)), None)
        if key not in FILTER_FIELDS and not (prefix and str(key)[len(prefix):].replace("_", "").isalnum()):
            raise LineupError(f"filter field {key!r} is not stored; filter on one of: {filter_help()}")
        kind = FILTER_FIELDS.get(key, str)
        values = value if isinstance(value, list) else [value]
        if not values:
            raise LineupError(f"filter {key}: empty list; give at least one value")
        for v in values:
            if isinstance(v, dict):
                raise LineupError(f"filter {key}={v!r}: only exact values (or a list of them) match; ranges "
                                  "are not supported")
            if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
                raise LineupError(f"filter {key}={v!r}: must be an integer")
            if kind is int and abs(v) > _INT64:
                raise LineupError(f"filter {key}={v}: out of range (64-bit integers only)")
            if kind is str and not isinstance(v, str):
                raise LineupError(f"filter {key}={v!r}: must be a string")
    return filter


def record_payload(record: PersonImage | dict[str, Any]) -> dict[str, Any]:
    """Store payload of a dataset record (a `PersonImage` from finetune.data, or a plain dict with 'image')."""
    if isinstance(record, PersonImage):
        record = record.as_dict()
    if not record.get("image"):
        raise LineupError(f"record {record!r} has no 'image' path: every indexed record needs one")
    payload: dict[str, Any] = {"image": str(record["image"])}
    for key in PAYLOAD_FIELDS:
        if record.get(key) is not None:
            payload[key] = record[key]
    attrs = record.get("attributes")
    if attrs:
        payload["attributes"] = attrs
    return payload


class SearchEngine:
    """Embeds queries with ``embedder`` and searches ``collection`` of ``store``.

    Every search first checks (once) that the collection was built by this embedder.

    Answer re-ranking: with a ``vocabulary`` (``retrieval.dialogue.Vocabulary``) and an ``answer_weight``, a text
    or composed search fetches the top ``pool`` by cosine and adds answer_weight × the evidence of a hit's cached
    answers to the question bank (``cache_answers``) for what the query states about the wanted person (a
    description's words, a modification's new values): ``retrieval.judge.evidence``, each answer weighed by how
    the embedder's base answers that question (``reliability``; 0 for a hit without answers).
    """

    def __init__(self, embedder: Any, store: Store, collection: str = "gallery", vocabulary: Any = None,
                 answer_weight: float = 0.0, pool: int = 100, reliability: dict | None = None) -> None:
        self.embedder = embedder
        self.store = store
        self.collection = collection
        self.meta = embedder_meta(embedder)
        self.vocabulary, self.answer_weight, self.pool = vocabulary, answer_weight, pool
        self._reliability = reliability
        self._checked = False

    def _ensure(self, create: bool) -> None:
        if self._checked:
            return
        if create or self.store.has_collection(self.collection):
            if self.store.has_collection(self.collection):
                stored = self.store.get_meta(self.collection)
                if "adapter" in stored and "adapter_sha256" not in stored:
                    raise LineupError(f"collection '{self.collection}' records its adapter by path (an older "
                                      "Lineup), so its weights cannot be checked: re-index into another "
                                      "--collection")
            self.store.ensure_collection(self.collection, self.meta["dim"], self.meta)
            self._checked = True
        else:
            raise LineupError(
                f"collection '{self.collection}' does not exist: run `lineup index` first, or pass --collection"
            )

    # --- ingest ------------------------------------------------------------------------------------
    def index_images(
        self, records: Iterable[PersonImage | dict[str, Any]], batch_size: int = 16, progress: Progress = None,
        on_skip: Callable[[str, str], None] | None = None,
    ) -> int:
        """Embed and upsert images not yet in the collection; returns how many were added.

        Idempotent (ids are uuid5 of the image path) and resumable: an interrupted run loses at most one
        batch, and the next run skips everything already stored. With ``on_skip(image, reason)`` an unreadable
        image is reported and skipped (the rest of its batch is kept); without it, it raises LineupError.
        """
        if batch_size < 1:
            raise LineupError(f"batch_size={batch_size}: must be >= 1")
        self._ensure(create=True)
        by_id: dict[str, dict[str, Any]] = {}
        for record in records:
            payload = record_payload(record)
            by_id.setdefault(point_id(payload["image"]), payload)
        ids = list(by_id)
        present: set[str] = set()
        for start in range(0, len(ids), 1024):
            present |= self.store.existing_ids(self.collection, ids[start : start + 1024])
        todo = [i for i in ids if i not in present]
        if present:
            log.info("%d of %d images already indexed; embedding %d", len(present), len(ids), len(todo))
        if progress and present:
            progress(len(present))
        added = 0
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            chunk, vectors = self._encode_readable(chunk, by_id, batch_size, on_skip)
            if chunk:
                self.store.upsert(self.collection, chunk, vectors, [by_id[i] for i in chunk])
                added += len(chunk)
            if progress:
                progress(min(batch_size, len(todo) - start))
        if added:
            self.store.optimize(self.collection)
        return added

    def _encode_readable(self, chunk: list[str], by_id: dict[str, dict[str, Any]], batch_size: int,
                         on_skip: Callable[[str, str], None] | None) -> tuple[list[str], np.ndarray]:
        """Embed a batch; when an image of it cannot be read, embed its images one by one, skipping (and
        reporting) the unreadable ones, so every good image of the batch is kept."""
        try:
            return chunk, self.embedder.encode_images([by_id[i]["image"] for i in chunk], batch_size=batch_size)
        except LineupError:
            if on_skip is None:
                raise
        kept, vectors = [], []
        for i in chunk:
            try:
                vectors.append(self.embedder.encode_images([by_id[i]["image"]], batch_size=1)[0])
            except LineupError as err:
                on_skip(by_id[i]["image"], str(err))
                continue
            kept.append(i)
        return kept, np.stack(vectors) if vectors else np.zeros((0, self.meta["dim"]), np.float32)

    def cache_answers(
        self,
        question_bank: Sequence[dict[str, str]],
        answer_fn: Callable[[str, str], str] | None = None,
        progress: Progress = None,
    ) -> int:
        """Store answers to the THI question bank in each point's payload (``payload["answers"][key]``).

        ``answer_fn(image_path, question)`` defaults to the MLLM (``retrieval.judge.bank_answerer``). Points that
        already hold every answer are skipped, so this resumes too. Returns how many points were updated.
        """
        self._ensure(create=False)
        if answer_fn is None:
            from retrieval.judge import bank_answerer

            answer_fn = bank_answerer(self.embedder)
        keys = [q["key"] for q in question_bank]
        updated = 0
        for hit in list(self.store.scroll(self.collection)):
            have = hit.payload.get("answers") or {}
            missing = [q for q in question_bank if q["key"] not in have]
            if missing:
                answers = {**have, **{q["key"]: normalize_answer(answer_fn(hit.payload["image"], q["question"]))
                                      for q in missing}}
                self.store.set_payload(self.collection, hit.id, {"answers": {k: answers[k] for k in keys}})
                updated += 1
            if progress:
                progress(1)
        self.index_answers(keys)
        return updated

    def check(self) -> int:
        """Open the collection and check it was built by this embedder (a session's start-up check); returns
        how many points it holds."""
        self._ensure(create=False)
        return self.store.count(self.collection)

    def index_answers(self, keys: Sequence[str]) -> None:
        """Payload indexes on the cached answers (``answers.<key>``), so dialogue filters on them stay fast."""
        for key in keys:
            self.store.index_payload_field(self.collection, f"answers.{key}")

    # --- search ------------------------------------------------------------------------------------
    def search_vector(self, vector: np.ndarray, k: int = 10, filter: dict | None = None,
                      with_vectors: bool = False) -> list[Hit]:
        self._ensure(create=False)
        return self.store.search(self.collection, vector, _check_k(k), check_filter(filter), with_vectors)

    def search_vectors(self, vectors: np.ndarray, k: int | Sequence[int] = 10,
                       filter: dict | Sequence[dict | None] | None = None) -> list[list[Hit]]:
        """One store request for all rows; ``k`` / ``filter`` shared, or one per row (``Store.search_batch``)."""
        self._ensure(create=False)
        ks = _check_k(k) if isinstance(k, numbers.Integral) else [_check_k(x) for x in k]
        filters = check_filter(filter) if filter is None or isinstance(filter, dict) else [check_filter(f) for f in filter]
        return self.store.search_batch(self.collection, vectors, ks, filters)

    def stated(self, kind: str, query: str) -> dict[str, str]:
        """What a text query (``kind`` "text") or a modification ("composed") states about the wanted person's
        answers; empty without answer re-ranking."""
        if self.vocabulary is None or not self.answer_weight or kind == "image":
            return {}
        return self.vocabulary.stated(query) if kind == "text" else self.vocabulary.modification(query)

    def fetch_k(self, k: int, stated: dict[str, str]) -> int:
        """How many hits to fetch for a top k: the re-ranking pool when there is something to re-rank by."""
        return max(k, self.pool) if stated else k

    @property
    def reliability(self) -> dict:
        """Per question key, how far a cached answer is trusted (``retrieval.judge.evidence``): the one given, else
        the embedder's base's calibration (``retrieval.judge.answer_reliability``, read once)."""
        if self._reliability is None:
            from retrieval.judge import answer_reliability

            self._reliability = answer_reliability(self.embedder)
        return self._reliability

    def rerank(self, hits: list[Hit], stated: dict[str, str], k: int) -> list[Hit]:
        """The top k of ``hits`` by cosine + answer_weight × the evidence of their cached answers for ``stated``."""
        if not stated:
            return hits[:k]
        from retrieval.judge import evidence

        w, voc, sure = self.answer_weight, self.vocabulary, self.reliability
        scored = [Hit(h.id, h.score + w * evidence(h.payload.get("answers") or {}, stated, voc, sure), h.payload,
                      h.vector) for h in hits]
        return sorted(scored, key=lambda h: -h.score)[:k]

    def _search(self, vector: np.ndarray, stated: dict[str, str], k: int, filter: dict | None) -> list[Hit]:
        return self.rerank(self.search_vector(vector, self.fetch_k(_check_k(k), stated), filter), stated, k)

    def search_text(self, text: str, k: int = 10, filter: dict | None = None) -> list[Hit]:
        if not text or not text.strip():
            raise LineupError("empty text query: describe the person, e.g. 'a woman in a red coat'")
        return self._search(self.embedder.encode_text([text])[0], self.stated("text", text), k, filter)

    def search_image(self, image: Any, k: int = 10, filter: dict | None = None) -> list[Hit]:
        return self.search_vector(self.embedder.encode_images([_image(image)])[0], k, filter)

    def search_composed(self, image: Any, modification: str, k: int = 10, filter: dict | None = None) -> list[Hit]:
        if not modification or not modification.strip():
            raise LineupError("empty modification: say how the wanted person differs, e.g. 'wearing a blue hat'")
        vector = self.embedder.encode_composed([(_image(image), modification)])[0]
        return self._search(vector, self.stated("composed", modification), k, filter)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= MAX_K:
        raise LineupError(f"k={k!r}: must be an integer from 1 to {MAX_K}")
    return int(k)


def _image(image: Any) -> Any:
    """Paths are checked here so a typo is a one-line LineupError, not a PIL traceback."""
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise LineupError(f"image {image}: no such file — check the path")
        return str(image)
    return image

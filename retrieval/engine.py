"""SearchEngine: an embedder plus a store collection — resumable ingest and text / image / composed search."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from mllm_embed.errors import LineupError
from retrieval.store import Hit, Store, point_id

log = logging.getLogger(__name__)

Progress = Callable[[int], None] | None
PAYLOAD_FIELDS = ("person_id", "camera_id", "split")


def embedder_meta(embedder: Any) -> dict[str, Any]:
    """What made a collection's vectors: base model, adapter, dim, prompts hash (checked on reopen)."""
    cfg = getattr(embedder, "config", None)
    prompts = [getattr(cfg, f, "") for f in ("common_prompt", "image_prompt", "text_prompt", "composed_prompt")]
    adapter = getattr(embedder, "adapter", None)
    return {
        "model": getattr(cfg, "base_fingerprint", "") or getattr(cfg, "base_model", "") or type(embedder).__name__,
        "adapter": str(adapter) if adapter else "",
        "prompts": hashlib.sha1(json.dumps(prompts).encode()).hexdigest()[:12],
        "dim": int(embedder.dim),
    }


def record_payload(record: dict[str, Any]) -> dict[str, Any]:
    """Store payload of a dataset record (finetune.data.loaders columns or a plain dict with 'image')."""
    if not record.get("image"):
        raise LineupError(f"record {record!r} has no 'image' path: every indexed record needs one")
    payload: dict[str, Any] = {"image": str(record["image"])}
    for key in PAYLOAD_FIELDS:
        if record.get(key) is not None:
            payload[key] = record[key]
    attrs = record.get("attributes")
    if isinstance(attrs, str):
        attrs = json.loads(attrs) if attrs else None
    if attrs:
        payload["attributes"] = attrs
    return payload


class SearchEngine:
    """Embeds queries with ``embedder`` and searches ``collection`` of ``store``.

    Every search first checks (once) that the collection was built by this embedder.
    """

    def __init__(self, embedder: Any, store: Store, collection: str = "gallery") -> None:
        self.embedder = embedder
        self.store = store
        self.collection = collection
        self.meta = embedder_meta(embedder)
        self._checked = False

    def _ensure(self, create: bool) -> None:
        if self._checked:
            return
        if create or self.store.has_collection(self.collection):
            self.store.ensure_collection(self.collection, self.meta["dim"], self.meta)
            self._checked = True
        else:
            raise LineupError(
                f"collection '{self.collection}' does not exist: run `lineup index` first, or pass --collection"
            )

    # --- ingest ------------------------------------------------------------------------------------
    def index_images(
        self, records: Iterable[dict[str, Any]], batch_size: int = 16, progress: Progress = None
    ) -> int:
        """Embed and upsert images not yet in the collection; returns how many were added.

        Idempotent (ids are uuid5 of the image path) and resumable: an interrupted run loses at most one
        batch, and the next run skips everything already stored.
        """
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
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            vectors = self.embedder.encode_images([by_id[i]["image"] for i in chunk], batch_size=batch_size)
            self.store.upsert(self.collection, chunk, vectors, [by_id[i] for i in chunk])
            if progress:
                progress(len(chunk))
        if todo:
            self.store.optimize(self.collection)
        return len(todo)

    def cache_answers(
        self,
        question_bank: Sequence[dict[str, str]],
        answer_fn: Callable[[str, str], str] | None = None,
        progress: Progress = None,
    ) -> int:
        """Store answers to the THI question bank in each point's payload (``payload["answers"][key]``).

        ``answer_fn(image_path, question)`` defaults to the MLLM (``embedder.answer``). Points that already
        hold every answer are skipped, so this resumes too. Returns how many points were updated.
        """
        self._ensure(create=False)
        answer_fn = answer_fn or (lambda image, question: self.embedder.answer(image, question))
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
            self.store.create_payload_index(self.collection, f"answers.{key}")

    # --- search ------------------------------------------------------------------------------------
    def search_vector(self, vector: np.ndarray, k: int = 10, filter: dict | None = None,
                      with_vectors: bool = False) -> list[Hit]:
        self._ensure(create=False)
        return self.store.search(self.collection, vector, k, filter, with_vectors)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, filter: dict | None = None) -> list[list[Hit]]:
        self._ensure(create=False)
        return self.store.search_batch(self.collection, vectors, k, filter)

    def search_text(self, text: str, k: int = 10, filter: dict | None = None) -> list[Hit]:
        if not text or not text.strip():
            raise LineupError("empty text query: describe the person, e.g. 'a woman in a red coat'")
        return self.search_vector(self.embedder.encode_text([text])[0], k, filter)

    def search_image(self, image: Any, k: int = 10, filter: dict | None = None) -> list[Hit]:
        return self.search_vector(self.embedder.encode_images([_image(image)])[0], k, filter)

    def search_composed(self, image: Any, modification: str, k: int = 10, filter: dict | None = None) -> list[Hit]:
        if not modification or not modification.strip():
            raise LineupError("empty modification: say how the wanted person differs, e.g. 'wearing a blue hat'")
        return self.search_vector(self.embedder.encode_composed([(_image(image), modification)])[0], k, filter)


def normalize_answer(answer: str) -> str:
    return " ".join(str(answer).lower().strip().rstrip(".!").split())


def _image(image: Any) -> Any:
    """Paths are checked here so a typo is a one-line LineupError, not a PIL traceback."""
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise LineupError(f"image {image}: no such file — check the path")
        return str(image)
    return image

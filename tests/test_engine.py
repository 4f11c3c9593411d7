"""SearchEngine: resumable, idempotent ingest; the right person ranks first for every query kind."""

from __future__ import annotations

import numpy as np
import pytest
from _retrieval_fakes import BANK, VOCAB, FakeEmbedder, caption, make_gallery

from mllm_embed.errors import LineupError
from retrieval.dialogue import Vocabulary
from retrieval.engine import SearchEngine
from retrieval.store import open_store


@pytest.fixture
def gallery(tmp_path):
    return make_gallery(tmp_path / "imgs", identities=20, per_id=3)


class Interrupt(Exception):
    pass


def test_resumed_ingest_counts_every_image_once(gallery, tmp_path):
    records, attrs = gallery
    emb = FakeEmbedder(attrs)
    seen = []

    def die_midway(n):
        seen.append(n)
        if sum(seen) >= 30:
            raise Interrupt

    store = open_store(path=tmp_path / "idx")
    with pytest.raises(Interrupt):  # killed after half the images
        SearchEngine(emb, store, "g").index_images(records, batch_size=10, progress=die_midway)
    store.close()
    assert open_store(path=tmp_path / "idx").count("g") == 30  # what was upserted survived the "crash"

    store = open_store(path=tmp_path / "idx")  # reopened: resume embeds only the rest
    emb.calls["image"] = 0
    engine = SearchEngine(emb, store, "g")
    assert engine.index_images(records, batch_size=10) == 30
    assert emb.calls["image"] == 30
    assert store.count("g") == len(records) == 60
    assert engine.index_images(records + records[:5], batch_size=10) == 0  # idempotent, dupes ignored
    assert store.count("g") == 60
    ids = [h.id for h in store.scroll("g")]
    assert len(ids) == len(set(ids)) == 60
    store.close()


@pytest.mark.parametrize("backend", ["edge", "memory"])
def test_known_target_ranks_first(gallery, tmp_path, backend):
    records, attrs = gallery
    store = open_store(path=tmp_path / "idx") if backend == "edge" else open_store(url=":memory:")
    engine = SearchEngine(FakeEmbedder(attrs), store, "g")
    engine.index_images(records, batch_size=8)

    for pid in (0, 7, 13):
        rec = records[3 * pid]
        hits = engine.search_text(caption(rec.attributes), k=3)
        assert {h.payload["person_id"] for h in hits} == {pid}  # all 3 images of that person on top

        hits = engine.search_image(rec.image, k=3)
        assert hits[0].payload["image"] == rec.image
        assert all(h.payload["person_id"] == pid for h in hits)

        hits = engine.search_image(rec.image, k=2, filter={"camera_id": 2})
        assert hits[0].payload["person_id"] == pid and hits[0].payload["camera_id"] == 2

    # composed: reference + the edit that turns it into another person of the gallery
    by_attrs = {tuple(sorted(r.attributes.items())): r.person_id for r in records}
    found = 0
    for ref in records[::3]:
        for key, value in (("upper_color", "red"), ("upper_color", "blue"), ("hat", "hat"), ("hat", "bareheaded")):
            target = {**ref.attributes, key: value}
            pid = by_attrs.get(tuple(sorted(target.items())))
            if pid is None or pid == ref.person_id:
                continue
            hits = engine.search_composed(ref.image, f"now wearing {value}", k=1)
            assert hits[0].payload["person_id"] == pid
            found += 1
    assert found >= 1
    store.close()


def test_wrong_embedder_and_bad_queries_raise(gallery, tmp_path):
    records, attrs = gallery
    store = open_store(path=tmp_path / "idx")
    engine = SearchEngine(FakeEmbedder(attrs), store, "g")
    with pytest.raises(LineupError, match="lineup index"):
        engine.search_text("man")
    engine.index_images(records[:6])
    with pytest.raises(LineupError, match="18-d vectors but the embedder gives 20-d"):
        SearchEngine(FakeEmbedder(attrs, dim_pad=2), store, "g").search_text("man")
    other = FakeEmbedder(attrs)
    other.config.base_fingerprint = "another-model"
    with pytest.raises(LineupError, match="model"):
        SearchEngine(other, store, "g").index_images(records)
    with pytest.raises(LineupError, match="no such file"):
        engine.search_image(tmp_path / "missing.png")
    with pytest.raises(LineupError, match="empty text"):
        engine.search_text("  ")
    store.close()


def test_cache_answers_fills_payload_and_resumes(gallery, tmp_path):
    records, attrs = gallery
    emb = FakeEmbedder(attrs)
    engine = SearchEngine(emb, open_store(url=":memory:"), "g")
    engine.index_images(records[:9])
    assert engine.cache_answers(BANK) == 9
    assert emb.calls["answer"] == 9 * len(BANK)
    for hit in engine.store.scroll("g"):
        assert hit.payload["answers"] == attrs[hit.payload["image"]]
    assert engine.cache_answers(BANK) == 0  # nothing missing: no MLLM calls
    assert emb.calls["answer"] == 9 * len(BANK)
    vec = emb.encode_text([caption(records[0].attributes)])[0]
    assert np.isclose(engine.search_vector(vec, k=1)[0].score, 1.0, atol=0.01)


def test_answer_reranking_puts_the_stated_person_first(gallery):
    """A blurred embedding (noise 1.0) mixes people up; with cached answers to the bank (the fake MLLM reads the
    attributes), re-ranking by how far they agree with what a description or a modification states puts the
    wanted person first; without a vocabulary the ranking is the cosine's."""
    records, attrs = gallery
    emb = FakeEmbedder(attrs, noise=1.0)
    store = open_store(url=":memory:")
    plain = SearchEngine(emb, store, "g")
    plain.index_images(records)
    plain.cache_answers(BANK)
    reranked = SearchEngine(emb, store, "g", vocabulary=Vocabulary.build(BANK, VOCAB, {}), answer_weight=3.0)
    people = {r.person_id: r.attributes for r in records}

    def text_rank1(engine):
        return np.mean([engine.search_text(caption(a), k=1)[0].payload["person_id"] == p for p, a in people.items()])

    assert text_rank1(reranked) == 1.0 and text_rank1(plain) < 0.9

    # composed: a reference person and a wanted one who differs in the top's colour only; once re-ranked every
    # top hit shows the new colour on the same kind of top, and the wanted person is first at least as often
    first_image = {r.person_id: r.image for r in reversed(records)}
    pairs = [(p, q) for p in people for q in people
             if {k for k in VOCAB if people[p][k] != people[q][k]} == {"upper_color"}]
    assert pairs

    def composed_top(engine):
        return [(engine.search_composed(first_image[p], f"{people[q]['upper_color']} {people[p]['upper_type']} "
                                        f"instead of {people[p]['upper_color']}", k=1)[0].payload["person_id"], q)
                for p, q in pairs]

    ranked, cosine = composed_top(reranked), composed_top(plain)
    assert all(people[top][k] == people[q][k] for top, q in ranked for k in ("upper_color", "upper_type"))
    assert sum(t == q for t, q in ranked) >= sum(t == q for t, q in cosine)

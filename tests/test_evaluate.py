"""Evaluation: numbers equal the metric functions on the same similarity matrices; verification + plots."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from _retrieval_fakes import FakeEmbedder, VOCAB, hand_composed_case, make_gallery
from PIL import Image

from finetune.data import PersonImage, Triplet
from mllm_embed.errors import LineupError
from retrieval.evaluate import (EvalConfig, evaluate_composed, evaluate_i2i, evaluate_t2i,
                                evaluate_verification, sample_pairs)
from retrieval.metrics import rank_metrics, recall_at_k


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    records, attrs = make_gallery(tmp_path_factory.mktemp("ev") / "imgs", identities=16, per_id=3, seed=5)
    # a vague caption too, so text→image is not perfect
    records = [replace(r, captions=(*r.captions, f"{r.attributes['gender']} {r.attributes['upper_color']}"))
               for r in records]
    return records, FakeEmbedder(attrs, noise=0.05)


def test_t2i_and_i2i_equal_metric_functions(data):
    records, emb = data
    vecs = emb.encode_images([r.image for r in records])
    texts = [(c, r.person_id) for r in records for c in r.captions]
    sim = emb.encode_text([t for t, _ in texts]) @ vecs.T
    gp = [r.person_id for r in records]
    got = evaluate_t2i(emb, records)
    assert got == rank_metrics(sim, [p for _, p in texts], gp)
    assert 50 < got["R1"] < 100 and got["queries"] == len(texts)

    cams = [r.camera_id for r in records]
    got = evaluate_i2i(emb, records, image_vecs=vecs)
    assert got == rank_metrics(vecs @ vecs.T, gp, gp, cams, cams)
    assert got["R1"] == 100.0  # same attributes → same person, and the query itself is excluded
    self_only = list(range(len(records)))  # no camera ids (CUHK-PEDES style): only the query itself is excluded
    got = evaluate_i2i(emb, [replace(r, camera_id=-1) for r in records], image_vecs=vecs)
    assert got == rank_metrics(vecs @ vecs.T, gp, gp, self_only, self_only) and got["skipped"] == 0


def test_composed_recall_is_identity_level(data):
    records, emb = data
    by_attrs = {tuple(sorted(r.attributes.items())): r.person_id for r in records}
    triplets = []
    for ref in records[::3]:
        for key, values in VOCAB.items():
            for value in values:
                target = by_attrs.get(tuple(sorted({**ref.attributes, key: value}.items())))
                if target is not None and target != ref.person_id:
                    triplets.append(Triplet(ref.image, f"wearing {value}", target="", reference_id=ref.person_id,
                                            target_id=target))  # no target image: identity level only
    triplets.append(Triplet(records[0].image, "x", target="", reference_id=0, target_id=999))
    got = evaluate_composed(emb, records, triplets)
    assert got["skipped"] == 1 and got["queries"] == len(triplets) - 1 >= 1
    # same numbers by hand: best image per person, reference image excluded
    vecs = emb.encode_images([r.image for r in records])
    q = emb.encode_composed([(t.reference, t.modification) for t in triplets[:-1]])
    sim = q @ vecs.T
    for i, t in enumerate(triplets[:-1]):
        sim[i, [r.image for r in records].index(t.reference)] = -np.inf
    pids = np.array([r.person_id for r in records])
    people = sorted(set(pids))
    per_person = np.stack([sim[:, pids == p].max(1) for p in people], 1)
    expected = recall_at_k(per_person, np.array([people.index(t.target_id) for t in triplets[:-1]]))
    assert {k: got[k] for k in expected} == expected and expected["R@1"] == 100.0
    # mAP ranks the images, every image of the target person a true match
    assert got["mAP"] == rank_metrics(sim, [t.target_id for t in triplets[:-1]], pids)["mAP"]
    assert not any(k.startswith("exact_") for k in got)  # no triplet names a target image


def test_composed_exact_target_recall_by_hand(tmp_path):
    records, triplets, emb = hand_composed_case(tmp_path)  # the ranks are spelled out in its docstring
    got = evaluate_composed(emb, records, triplets, ks=(1, 2, 3))
    assert (got["queries"], got["skipped"], got["exact_queries"]) == (3, 1, 2)
    # identity level: person ranks 1, 2, 1
    assert (got["R@1"], got["R@2"], got["R@3"]) == (pytest.approx(200 / 3), 100.0, 100.0)
    # exact target: image ranks 3 and 2 (q3's target image is not in the gallery)
    assert (got["exact_R@1"], got["exact_R@2"], got["exact_R@3"]) == (0.0, 50.0, 100.0)
    # identity mAP over images: q1's person-2 images at ranks 1 and 3, q2's at 2 and 3, q3's one image at 1
    assert got["mAP"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2 + 1) / 3)


def test_verification_scores_and_plots(data, tmp_path):
    records, emb = data
    pairs = sample_pairs(records, 40, seed=1)
    assert sum(s for *_, s in pairs) == 20
    assert all((records[i].person_id == records[j].person_id) == bool(s) and i != j for i, j, s in pairs)

    got = evaluate_verification(emb, records, config=EvalConfig(pairs=40, seed=1), plots=tmp_path / "plots")
    assert got["embedding"]["auc"] == 1.0 and got["embedding"]["accuracy"] == 1.0
    assert got["mllm"]["accuracy"] == 1.0 and got["mllm"]["yes_rate"] == 0.5  # the fake judges pairs exactly
    for path in got["plots"]:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 300
    strict = evaluate_verification(emb, records, config=EvalConfig(pairs=40, seed=1, threshold=2.0,
                                                                   mllm_judge=False))
    assert strict["embedding"]["recall"] == 0.0 and "mllm" not in strict


@pytest.mark.slow
def test_real_model_end_to_end(tiny_base, tiny_world, tmp_path):
    """The tiny pre-trained MLLM through every path: ingest, search, eval tasks, verification, THI."""
    from finetune.data import load_split
    from finetune.data.world import QUESTION_BANK
    from mllm_embed import load_embedder
    from retrieval.engine import SearchEngine
    from retrieval.evaluate import evaluate_dataset, evaluate_thi_dataset
    from retrieval.store import open_store
    from retrieval.thi import THIConfig

    emb = load_embedder(tiny_base, device="cpu")
    records = load_split(tiny_world, "test")
    got = evaluate_dataset(emb, tiny_world, config=EvalConfig(pairs=16), plots=tmp_path / "plots")
    assert set(got) == {"t2i", "i2i", "composed", "verify"}
    assert got["composed"]["exact_queries"] == got["composed"]["queries"]  # world targets lie in the split
    vecs = emb.encode_images([r.image for r in records])
    texts = [(c, r.person_id) for r in records for c in r.captions]
    sim = emb.encode_text([t for t, _ in texts]) @ vecs.T
    expected = rank_metrics(sim, [p for _, p in texts], [r.person_id for r in records])
    assert got["t2i"]["R1"] == pytest.approx(expected["R1"]) and got["t2i"]["mAP"] == pytest.approx(expected["mAP"])
    assert 0.0 <= got["verify"]["embedding"]["auc"] <= 1.0 and "mllm" in got["verify"]

    with open_store(path=tmp_path / "idx") as store:  # an image finds itself through the real store
        engine = SearchEngine(emb, store, "g")
        assert engine.index_images(records[:12], batch_size=4) == 12
        hit = engine.search_image(records[5].image, k=1)[0]
        assert hit.payload["image"] == records[5].image and hit.score == pytest.approx(1.0, abs=1e-3)

    # a session that does not listen starts from the plain ranking (a listening one from the re-ranked search)
    rounds = evaluate_thi_dataset(emb, tiny_world, QUESTION_BANK, THIConfig(rounds=2, listen=False), cache="truth",
                                  max_queries=12)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[2]["R1"] > rounds[0]["R1"]  # true answers from the simulated user re-rank the target up


def test_noise_task_needs_a_world_with_attributes():
    from finetune.evaluate_nam import evaluate_noise

    with pytest.raises(LineupError, match="real.csv: the noise task needs records with attributes"):
        evaluate_noise(None, [PersonImage("a.png", 0, captions=("a man",))], source="real.csv")

"""The conventional control (benchmarks/control_dual_encoder.py): trained briefly on the fixture world's train
split, it must find held-out people from text far above chance through the project's own protocols."""

from __future__ import annotations

import numpy as np
import pytest
from _env import benchmark

from finetune.data import load_split

control = benchmark("control_dual_encoder")


@pytest.fixture(scope="module")
def trained(tiny_world):
    # ~20 CPU-seconds: image-text InfoNCE only (composed queries then use the untrained sum of the towers)
    cfg = control.ControlConfig(steps=80, ids_per_batch=16, images_per_id=2, triplets_per_batch=0,
                                identity_weight=0.0)
    return control.train_control(tiny_world, cfg)


def test_control_learns_text_to_image_on_unseen_people(trained, tiny_world):
    model, log = trained
    assert log["loss_curve"][-1]["contrastive"] < log["loss_curve"][0]["contrastive"]
    res = control.evaluate_control(model, tiny_world, "test")
    chance = res["split"]["chance_R1"]
    assert res["t2i"]["queries"] == 2 * res["split"]["images"]  # every caption of every test image queries
    assert res["t2i"]["R1"] > 2.5 * chance, (res["t2i"], chance)
    assert res["i2i"]["mAP"] > 2.5 * chance, res["i2i"]
    assert res["composed"]["queries"] > 0 and "exact_R@10" in res["composed"]


def test_control_embedder_rows_are_unit_vectors(trained, tiny_world):
    model, _ = trained
    emb = control.ControlEmbedder(model)
    records = load_split(tiny_world, "test")[:5]
    images = emb.encode_images([r.image for r in records], batch_size=2)
    texts = emb.encode_text([r.captions[0] for r in records], batch_size=2)
    composed = emb.encode_composed([(r.image, "wearing a red hat") for r in records], batch_size=2)
    for vecs in (images, texts, composed):
        assert vecs.shape == (5, model.cfg.dim) and vecs.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb.encode_images([r.image for r in records], batch_size=5), images, atol=1e-5)


def test_control_config_rejects_bad_values():
    with pytest.raises(ValueError, match="ids_per_batch"):
        control.ControlConfig(ids_per_batch=1)
    with pytest.raises(ValueError, match="divisible"):
        control.ControlConfig(height=100)

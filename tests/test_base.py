"""The offline base's own steps: vision pre-training teaches the tower (and only the tower and projector) to see,
and stage-1 batches pair one-edit neighbours as hard negatives."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from finetune.config import TrainConfig
from finetune.train import _Data
from finetune.vision_pretrain import VisionPretrainConfig, pretrain_vision
from mllm_embed.errors import LineupError


def test_vision_pretraining_lowers_its_loss_and_changes_only_the_tower(tiny_base, tiny_world, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    before = load_file(str(base / "model.safetensors"))
    result = pretrain_vision(base, tiny_world, VisionPretrainConfig(steps=20, cycles=2, identities_per_batch=8,
                                                                    images_per_identity=2, warmup_steps=3,
                                                                    eval_images=64))
    first, last = (c["loss_curve"] for c in result["cycles"])
    assert sum(last[-5:]) / 5 < sum(first[:5]) / 5  # attribute + identity loss falls
    assert set(result["held_out_attribute_accuracy"]) >= {"gender", "upper_color", "lower_type", "glasses"}
    after = load_file(str(base / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("vision_tower" in k or "multi_modal_projector" in k for k in changed)
    assert json.loads((base / "vision_pretrain.json").read_text())["steps"] == 40  # 2 cycles x 20


def test_killed_vision_pretraining_resumes_to_the_same_tower(tiny_base, tiny_world, tmp_path):
    """Vision pre-training runs in the one training loop: killed in its second cycle and resumed, it logs the same
    losses and saves the same tower as an uninterrupted run (finished cycles are kept, not rerun)."""
    cfg = VisionPretrainConfig(steps=6, cycles=2, identities_per_batch=4, images_per_identity=2, warmup_steps=2,
                               eval_images=0, save_every=2)
    full, killed = tmp_path / "full", tmp_path / "killed"
    for folder in (full, killed):
        shutil.copytree(tiny_base, folder)
    results = [pretrain_vision(full, tiny_world, cfg)]

    class Kill(Exception):
        pass

    seen = []

    def kill_in_cycle_1(n: int):
        seen.append(n)
        if len(seen) == 9:
            raise Kill

    with pytest.raises(Kill):
        pretrain_vision(killed, tiny_world, cfg, progress=kill_in_cycle_1)
    assert (killed / "vision_run" / "cycle-0" / "result.json").exists()
    assert [p.name for p in (killed / "vision_run" / "cycle-1").glob("checkpoint-*")] == ["checkpoint-2"]
    resumed = []
    results.append(pretrain_vision(killed, tiny_world, cfg, progress=resumed.append))
    assert len(resumed) == 4 and not (killed / "vision_run").exists()
    for done, again in zip(*(r["cycles"] for r in results)):
        assert again["loss_curve"] == pytest.approx(done["loss_curve"], abs=1e-4)
        assert again["final_loss"] == pytest.approx(done["final_loss"], abs=1e-6)
    weights = [load_file(str(folder / "model.safetensors")) for folder in (full, killed)]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])


def test_hard_negative_batches_hold_one_edit_neighbours(tiny_base, tiny_world, tmp_path):
    def neighbour_pairs(hard: bool) -> int:
        cfg = TrainConfig.of(base_model=str(tiny_base), data=str(tiny_world), output_dir=str(tmp_path), ids_per_batch=4,
                             hard_negatives=hard)
        data = _Data("stage1", cfg)
        assert data.neighbours  # the world's composed triplets link one-edit neighbours in the train split
        pairs = 0
        for epoch in range(3):
            for _, idx in data.plan(epoch):
                pids = sorted({data.records[i].person_id for i in idx})
                pairs += sum(b in data.neighbours.get(a, ()) for a in pids for b in pids if a < b)
        return pairs

    assert neighbour_pairs(True) > 2 * max(1, neighbour_pairs(False))


def test_resnet_tower_base_loads_learns_and_keeps_frozen_norms(tiny_world, tmp_path):
    """The shipped base's layout (FastVLM: a ResNet's feature map read cell by cell) builds, loads through the hub
    path, learns in vision pre-training, and once frozen embeds an image the same whatever shares its batch."""
    from finetune.data import load_split
    from finetune.data.world import world_texts
    from mllm_embed import load_embedder
    from mllm_embed.embedder import load_image, train_mode
    from mllm_embed.tiny import build_tiny_base

    with pytest.raises(LineupError, match="tower='conv'"):
        build_tiny_base(["a man"], tmp_path / "bad", size="test", tower="conv")
    base = build_tiny_base(world_texts(tiny_world), tmp_path / "cnn", size="test", tower="resnet")
    config = json.loads((base / "config.json").read_text())
    assert (config["model_type"], config["vision_config"]["model_type"]) == ("fast_vlm", "resnet")
    result = pretrain_vision(base, tiny_world, VisionPretrainConfig(steps=30, cycles=1, identities_per_batch=8,
                                                                    images_per_identity=2, warmup_steps=3,
                                                                    eval_images=0))
    curve = result["cycles"][0]["loss_curve"]
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5
    stats = {k: v for k, v in load_file(str(base / "model.safetensors")).items() if k.endswith("running_var")}
    assert stats and not all(torch.equal(v, torch.ones_like(v)) for v in stats.values())  # statistics were learnt

    embedder = load_embedder(base)
    images = [r.image for r in load_split(tiny_world, "test")[:3]]
    vectors = embedder.encode_images(images)
    assert vectors.shape == (3, embedder.dim) and abs(float((vectors ** 2).sum(1).mean()) - 1) < 1e-4
    half = load_embedder(base, dtype="bf16").encode_images(images)  # float32 pixels meet bf16 convolutions
    assert (half * vectors).sum(1).min() > 0.99
    embedder.model.requires_grad_(False)
    train_mode(embedder.model)  # as in the LoRA stages: training mode, the tower frozen
    pixels = embedder.family.images([load_image(p) for p in images]).tensors["pixel_values"].to(embedder.device)
    tower = embedder.model.model.vision_tower
    with torch.no_grad():
        together, alone = tower(pixels).last_hidden_state[0], tower(pixels[:1]).last_hidden_state[0]
    assert embedder.model.training and torch.allclose(together, alone, atol=1e-5)

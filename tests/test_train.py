"""Two-stage fine-tuning on the tiny base and world: retrieval improves, resume is exact, QLoRA runs."""

import dataclasses
import json

import numpy as np
import pytest

from finetune.config import TrainConfig
from finetune.data import load_split
from finetune.train import evaluate_split, train
from mllm_embed import load_embedder
from mllm_embed.errors import LineupError


def _cfg(tiny_base, tiny_world, out, **kw) -> TrainConfig:
    return TrainConfig.of(**{"base_model": str(tiny_base), "data": str(tiny_world), "output_dir": str(out),
                          "eval_split": "", **kw})


def _losses(out, kind=None):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["event"] == "step" and kind in (None, r["kind"])]


@pytest.fixture(scope="module")
def stages(tiny_base, tiny_world, tiny_adapter, tmp_path_factory):
    """Base, stage-1 and stage-2 metrics, adapters reloaded from disk.

    Measured on the train split's identities (136 caption queries): the test-size base is so weak that the
    9 held-out identities (36 queries) move by one query per ~3 points, which is noise, not a signal.
    Held-out gains are measured at demo size by benchmarks/finetune_results.py and `lineup demo`.
    """
    out = tmp_path_factory.mktemp("stages")
    s2 = train("stage2", _cfg(tiny_base, tiny_world, out / "s2", epochs=4, init_adapter=str(tiny_adapter)))
    metrics = {name: evaluate_split(load_embedder(tiny_base, adapter=a), tiny_world, "train")
               for name, a in (("base", None), ("stage1", tiny_adapter), ("stage2", s2))}
    return metrics, _losses(tiny_adapter.parent), _losses(out / "s2", kind="stage2")


def test_stage1_loss_falls_and_retrieval_improves_over_the_base(stages):
    metrics, losses, _ = stages
    base, s1 = metrics["base"], metrics["stage1"]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.2
    assert s1["t2i_mAP"] > base["t2i_mAP"] + 4  # captions now find their person (measured 6.1 → 18.2)
    assert s1["t2i_R1"] > base["t2i_R1"] + 3  # Rank-1 0.7 → 9.6 and 2.9 → 7.7 on two stage-0 draws of the base
    assert s1["i2i_mAP"] > base["i2i_mAP"] + 2  # image embeddings separate identities (stage 1: 25.1)


def test_stage2_follows_modifications_without_forgetting_text_search(stages):
    metrics, _, losses = stages
    s1, s2 = metrics["stage1"], metrics["stage2"]
    assert np.mean(losses[-6:]) < np.mean(losses[:6])
    assert s2["comp_R@10"] > s1["comp_R@10"] + 10  # measured: 14.5 → 44.1
    assert s2["comp_id_mAP"] > s1["comp_id_mAP"] + 5  # 9.8 → 25.5
    assert s2["comp_R@1"] > s1["comp_R@1"] + 2  # 1.3 → 5.3
    assert s2["t2i_mAP"] >= s1["t2i_mAP"] - 2  # 18.2 → 21.8: the replayed stage-1 batches keep text search
    assert s2["t2i_R1"] >= s1["t2i_R1"] - 3  # Rank-1 9.6 → 12.9


def test_epoch_evaluation_reports_the_retrieval_protocols_under_flat_keys(tmp_path):
    """finetune.train.evaluate is an adapter over retrieval.evaluate: one gallery, the training-log keys."""
    from _retrieval_fakes import hand_composed_case

    from finetune.train import evaluate
    from retrieval.evaluate import evaluate_composed, evaluate_i2i, evaluate_t2i

    records, triplets, emb = hand_composed_case(tmp_path)
    got = evaluate(emb, records, triplets)
    t2i, i2i, comp = evaluate_t2i(emb, records), evaluate_i2i(emb, records), evaluate_composed(emb, records, triplets)
    assert got == {"t2i_R1": t2i["R1"], "t2i_mAP": t2i["mAP"], "i2i_R1": i2i["R1"], "i2i_mAP": i2i["mAP"],
                   "comp_R@1": comp["exact_R@1"], "comp_R@5": comp["exact_R@5"], "comp_R@10": comp["exact_R@10"],
                   "comp_id_R1": comp["R@1"], "comp_id_mAP": comp["mAP"]}
    assert got["t2i_R1"] == 62.5  # every caption queries: the 3 second captions pointing at c0 miss (first only: 100)
    assert (got["comp_R@1"], got["comp_R@5"], got["comp_id_R1"]) == (0.0, 100.0, pytest.approx(200 / 3))
    no_cam = evaluate(emb, [dataclasses.replace(r, camera_id=-1) if i == 0 else r for i, r in enumerate(records)],
                      triplets)
    assert no_cam["i2i_R1"] >= got["i2i_R1"] and "comp_id_mAP" in no_cam  # unknown camera: only self excluded
    assert not any(k.startswith("comp") for k in evaluate(emb, records, triplets[3:]))  # target person absent


class _Kill(Exception):
    pass


def test_killed_run_resumes_to_the_same_loss_curve(tiny_base, tiny_world, tmp_path):
    kw = {"max_steps": 5, "save_every": 2, "ids_per_batch": 4, "mask_mode": "uniform", "rda_prob": 0.5}
    train("stage1", _cfg(tiny_base, tiny_world, tmp_path / "full", **kw))
    full = _losses(tmp_path / "full")

    def kill_at_3(event):
        if event["event"] == "step" and event["step"] == 3:
            raise _Kill

    with pytest.raises(_Kill):
        train("stage1", _cfg(tiny_base, tiny_world, tmp_path / "killed", **kw), callback=kill_at_3)
    assert [p.name for p in sorted((tmp_path / "killed").glob("checkpoint-*"))] == ["checkpoint-2"]
    events = []
    adapter = train("stage1", _cfg(tiny_base, tiny_world, tmp_path / "killed", resume=True, **kw), callback=events.append)
    assert [e["step"] for e in events] == [3, 4, 5]  # continued after the checkpoint, not from scratch
    assert len(full) == 5 and _losses(tmp_path / "killed") == pytest.approx(full, abs=1e-5)
    assert all(e["samples_per_s"] > 0 for e in events)
    assert (adapter / "lineup_embedder.json").exists() and (adapter / "adapter_config.json").exists()


class _Planted:
    """Unpickling this writes a marker file: what a planted checkpoint would do with a full unpickler."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_checkpoint_runs_no_code_and_a_damaged_one_fails_in_one_line(tiny_base, tiny_world, tmp_path):
    import pickle

    kw = {"max_steps": 2, "save_every": 2, "ids_per_batch": 4, "mask_mode": "uniform"}
    out = tmp_path / "run"
    train("stage1", _cfg(tiny_base, tiny_world, out, **kw))
    state = out / "checkpoint-2" / "trainer_state.pt"
    assert state.exists()
    marker = tmp_path / "CODE_RAN"
    state.write_bytes(pickle.dumps({"step": _Planted(marker)}))
    with pytest.raises(LineupError, match=r"checkpoint-2: trainer_state.pt cannot be loaded .*delete that") as err:
        train("stage1", _cfg(tiny_base, tiny_world, out, resume=True, **kw))
    assert not marker.exists() and len(str(err.value).splitlines()) == 1
    state.write_bytes(b"\x80\x02truncated")
    with pytest.raises(LineupError, match=r"trainer_state.pt cannot be loaded"):
        train("stage1", _cfg(tiny_base, tiny_world, out, resume=True, **kw))


def test_qlora_with_8bit_adamw_and_checkpointing_trains_and_saves(tiny_base, tiny_world, tmp_path):
    cfg = _cfg(tiny_base, tiny_world, tmp_path, max_steps=2, ids_per_batch=4, quantization="4bit",
               optimizer="adamw8bit", gradient_checkpointing=True, save_every=2)
    train("stage1", cfg)
    # the 8-bit optimizer's state reloads through the weights-only loader
    adapter = train("stage1", cfg.with_overrides({"max_steps": 3, "resume": True}))
    assert len(_losses(tmp_path)) == 3 and all(np.isfinite(_losses(tmp_path)))
    emb = load_embedder(tiny_base, adapter=adapter)
    vec = emb.encode_text(["a man in a red shirt"])
    assert vec.shape == (1, emb.dim) and np.isfinite(vec).all()


def test_config_errors_name_the_flag(tiny_base, tiny_world, tmp_path):
    with pytest.raises(LineupError, match="--mask-mode must be one of"):
        _cfg(tiny_base, tiny_world, tmp_path, mask_mode="sometimes")
    with pytest.raises(LineupError, match="--identity-loss must be None or one of"):
        _cfg(tiny_base, tiny_world, tmp_path, identity_loss="arcface")
    with pytest.raises(LineupError, match="unknown field"):
        TrainConfig.of(base_model="b", data="d", output_dir="o", lr_rate=1)
    with pytest.raises(LineupError, match="stage"):
        train("stage3", _cfg(tiny_base, tiny_world, tmp_path))
    with pytest.raises(LineupError, match="ids_per_batch"):
        train("stage1", _cfg(tiny_base, tiny_world, tmp_path, ids_per_batch=500))


def test_nam_training_estimates_noise_for_every_caption_each_epoch(tiny_base, tiny_world, tmp_path):
    import torch

    cfg = _cfg(tiny_base, tiny_world, tmp_path, epochs=2, ids_per_batch=16, max_steps=3, save_every=3,
               mask_mode="nam", noisy_caption_prob=1.0, prompt_style="common")
    train("stage1", cfg)
    state = torch.load(tmp_path / "checkpoint-3" / "trainer_state.pt", weights_only=False)
    noise = dict(state["objective"]["masker"]["noise"])
    train_rows = load_split(tiny_world, "train")
    assert len(noise) == sum(len(r.captions) + bool(r.noisy_caption) for r in train_rows)
    assert any(k[1] == -1 for k in noise)  # the noisy captions were scored too
    assert all(np.isfinite(v).all() for v in noise.values())
    saved = json.loads((tmp_path / "adapter" / "lineup_embedder.json").read_text())
    assert saved["text_prompt"].endswith("Summarize the person in one word:")  # common instruction kept


def test_identity_loss_lifts_image_reid_on_people_never_seen(tiny_base, tiny_world, tiny_adapter, tmp_path):
    """Issue 7: SupCon on the MLLM's image embeddings (the fixture adapter's default) vs the image–text loss
    alone, same steps; image→image (cross-camera) on a second world whose 40 people were never trained on.
    Measured: mAP 12.6 vs 4.3, Rank-1 10.0 vs 0.6 (chance mAP about 4)."""
    from finetune.data.world import WorldConfig, generate_world
    from finetune.train import evaluate

    unseen = generate_world(tmp_path / "unseen", WorldConfig(identities=40, images_per_id=4, seed=99,
                                                           val_fraction=0.0, test_fraction=0.9))
    records = [r for split in ("train", "test") for r in load_split(unseen, split)]
    plain = train("stage1", _cfg(tiny_base, tiny_world, tmp_path / "plain", epochs=40, identity_loss=None))
    score = {name: evaluate(load_embedder(tiny_base, adapter=a), records)
             for name, a in (("supcon", tiny_adapter), ("plain", plain))}
    assert score["supcon"]["i2i_mAP"] > score["plain"]["i2i_mAP"] + 5, score
    assert score["supcon"]["i2i_R1"] > score["plain"]["i2i_R1"], score


def test_word_patch_loss_learns_only_when_the_token_embeddings_train(tiny_base, tiny_world, tmp_path):
    """The word–patch loss (chance: ln 8 for 8 identities) falls much further when the token embeddings train
    than under LoRA with frozen word vectors (measured, 60 steps: 2.09 → 1.57 vs 2.11 → 1.86). The trained
    embeddings travel with the adapter."""
    kw = {"epochs": 15, "word_patch_weight": 1.0, "identity_loss": None}
    runs = {mode: train("stage1", _cfg(tiny_base, tiny_world, tmp_path / mode, token_embeddings=mode, **kw))
            for mode in ("frozen", "full")}
    curves = {}
    for mode in runs:
        rows = [json.loads(x) for x in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        curves[mode] = [r["terms"]["word_patch"] for r in rows if r["event"] == "step"]
    first, last = np.mean(curves["full"][:10]), np.mean(curves["full"][-10:])
    assert last < first - 0.2, curves["full"]
    assert last < np.mean(curves["frozen"][-10:]) - 0.1, curves
    embeddings = [load_embedder(tiny_base, adapter=a).model.get_input_embeddings().weight for a in (None, runs["full"])]
    assert not np.allclose(embeddings[0].detach().cpu().numpy(), embeddings[1].detach().cpu().numpy())


def test_token_embeddings_lora_adapts_the_word_vectors_and_reloads(tiny_base, tiny_world, tmp_path):
    adapter = train("stage1", _cfg(tiny_base, tiny_world, tmp_path, max_steps=2, token_embeddings="lora"))
    emb = load_embedder(tiny_base, adapter=adapter)
    assert any("embed_tokens" in n and "lora_embedding" in n for n, _ in emb.model.named_parameters())
    base = load_embedder(tiny_base)
    assert not np.allclose(emb.encode_text(["a man in a red shirt"]), base.encode_text(["a man in a red shirt"]))


def test_word_grounding_makes_nam_find_injected_wrong_words(tiny_base, tiny_world, tmp_path):
    """Issue 4's NAM mechanism: stage 1 with the word-level word–patch loss on the layer NAM reads (input layer,
    vision tower trained in full) lifts NAM's ranking of freshly injected wrong words above correct ones
    (measured, 20 epochs: AUC 0.53 → 0.66, twice the asserted lift). Issue 4's target, AUC > 0.7 after 60
    epochs, is benchmarks/nam_grounding.py's figure (results/nam_grounding.json)."""
    from finetune import nam

    records = load_split(tiny_world, "train")
    base_auc = nam.detection_auc(load_embedder(tiny_base), records, layer=0, joint=False)
    adapter = train("stage1", _cfg(tiny_base, tiny_world, tmp_path, epochs=20, word_patch_weight=5.0,
                                   word_patch_level="word", nam_layer=0, token_embeddings="full", lora_vision="full"))
    emb = load_embedder(tiny_base, adapter=adapter)
    assert any("vision_tower" in n and "modules_to_save" in n for n, _ in emb.model.named_parameters())
    auc = nam.detection_auc(emb, records, layer=0, joint=False)
    assert auc > base_auc + 0.07, (base_auc, auc)

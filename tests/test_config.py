"""Training configs: nested sections, recipe files, and every bad value as one line naming its flag."""

from __future__ import annotations

import dataclasses

import pytest

from cli.main import main
from finetune.config import (RECIPES, BootstrapConfig, Stage0Config, TrainConfig, VisionPretrainConfig,
                             load_recipe)
from mllm_embed.errors import LineupError


def test_field_names_are_unique_across_sections_so_each_is_one_flag():
    names = [f.name for kind in TrainConfig.sections().values() for f in dataclasses.fields(kind)]
    assert len(names) == len(set(names)) and len(names) >= 49
    cfg = TrainConfig.of(epochs=3, lora_r=4, mask_mode="nam", output_dir="out")
    assert (cfg.schedule.epochs, cfg.model.lora_r, cfg.augment.mask_mode, cfg.run.output_dir) == (3, 4, "nam", "out")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.schedule.epochs = 5  # validated once, never changed after
    again = cfg.with_overrides({"epochs": 5})
    assert again.schedule.epochs == 5 and cfg.schedule.epochs == 3 and again.model == cfg.model


def test_lora_shape_with_a_continued_adapter_is_one_clear_line():
    with pytest.raises(LineupError, match=r"--lora-r, --token-embeddings would shape a new LoRA.*--merge-init"):
        TrainConfig.of(init_adapter="runs/stage1/adapter", lora_r=4, token_embeddings="full")
    merged = TrainConfig.of(init_adapter="a", merge_init=True, lora_r=4)  # a new LoRA on the merged adapter
    assert merged.model.new_lora and not TrainConfig.of(init_adapter="a").model.new_lora
    with pytest.raises(LineupError, match="--merge-init needs an init adapter"):
        TrainConfig.of(merge_init=True)


def test_recipes_load_and_unknown_keys_name_the_key(tmp_path):
    shipped = sorted(RECIPES.glob("*.yaml"))
    assert {"demo-stage1.yaml", "demo-stage2.yaml", "bootstrap.yaml", "bootstrap-test.yaml"} <= {p.name for p in shipped}
    for path in shipped:  # every shipped recipe loads and validates
        if path.name.startswith("bootstrap"):
            BootstrapConfig.from_dict(load_recipe(path), source=path.name)
        else:
            TrainConfig.from_recipe(path, load_recipe(path)["stage"])
    assert BootstrapConfig.recipe("test").stage0 == Stage0Config.for_tests()
    assert dataclasses.replace(BootstrapConfig.recipe("tiny").vision, save_every=0) == VisionPretrainConfig()
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule:\n  epoch: 3\n")
    with pytest.raises(LineupError, match=r"bad.yaml: unknown key 'schedule.epoch'; valid keys of schedule: \['epochs'"):
        TrainConfig.from_recipe(bad, "stage1")
    bad.write_text("optimiser: {lr: 1}\n")
    with pytest.raises(LineupError, match="unknown key 'optimiser'; valid sections"):
        TrainConfig.from_recipe(bad, "stage1")
    with pytest.raises(LineupError, match="demo-stage2.yaml is a stage2 recipe"):
        TrainConfig.from_recipe(RECIPES / "demo-stage2.yaml", "stage1")


@pytest.mark.parametrize("argv, message", [
    (["bootstrap", "--epochs", "0"], "--epochs: 0 must be >= 1"),
    (["bootstrap", "--vision-steps", "-3"], "--vision-steps: -3 must be >= 1"),
    (["train", "stage1", "{world}", "--lr", "0"], "--lr must be > 0 (got 0.0)"),
    (["train", "stage1", "{world}", "--epochs", "0"], "--epochs must be >= 1 (got 0)"),
    (["train", "stage1", "{world}", "--mask-rate", "1.5"], "--mask-rate must be in [0, 1) (got 1.5)"),
    (["train", "stage1", "{world}", "--ids-per-batch", "1"], "--ids-per-batch must be >= 2"),
    (["train", "stage2", "{world}", "--adapter", "a", "--lora-r", "4"], "--lora-r would shape a new LoRA"),
    (["train", "stage1", "{world}", "--config", "{recipe}"], "unknown key 'loss.weight'"),
    (["train", "stage1", "{world}", "--config", "missing.yaml"], "missing.yaml: cannot read the recipe"),
])
def test_out_of_range_flags_are_one_line_through_the_cli(argv, message, tiny_world, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss:\n  weight: 2\n")
    args = [a.replace("{recipe}", str(recipe)) for a in argv]
    if "{world}" in args:
        i = args.index("{world}")
        args[i:i + 1] = ["--world", str(tiny_world), "--model", str(tmp_path), "--out", str(tmp_path / "run")]
    assert main(args) == 2
    out = capsys.readouterr().out
    assert message in " ".join(out.split()) and "Traceback" not in out, out
    assert not (tmp_path / "run").exists()  # nothing started

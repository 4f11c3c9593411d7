"""Every `lineup` subcommand runs through `cli.main.main([...])`, argument parsing included: the class of bug
where a command's flags and the library disagree (e.g. a flag passed twice into a config) cannot hide."""

from __future__ import annotations

import json
import shutil

import yaml

from cli.main import build_parser, main
from finetune.config import TrainConfig
from finetune.data.world import QUESTION_BANK

# index, search, chat, batch and eval run in test_cli_e2e.py; caption and rewrite in test_cli_augment.py.
COVERED_ELSEWHERE = {"index", "search", "chat", "batch", "eval", "caption", "rewrite"}


def test_world_bootstrap_train_and_demo_run_from_the_command_line(tiny_world, tiny_base, tiny_adapter, tmp_path):
    names = set(build_parser()._subparsers._group_actions[0].choices)
    assert names - COVERED_ELSEWHERE == {"world", "bootstrap", "train", "demo"}

    # `world` and `bootstrap` build the demo project's world and a base; the demo then resumes from the world and
    # copies that base (--base)
    project = tmp_path / "demo"
    world, model = project / "world", tmp_path / "base"
    assert main(["world", "--out", str(world), "--identities", "16", "--images-per-id", "4", "--seed", "3"]) == 0
    assert len((world / "annotations.jsonl").read_text().splitlines()) == 64
    assert main(["bootstrap", "--world", str(world), "--out", str(model), "--size", "test", "--epochs", "1"]) == 0
    stage0 = (model / "stage0_done.json").read_bytes()
    assert json.loads(stage0)["steps"] > 0 and (model / "vision_pretrain.json").exists()
    answers = (model / "answers" / "answers_done.json").read_bytes()  # the answers adapter, then its calibration
    calibration = json.loads((model / "answer_confusion.json").read_text())
    assert calibration["images"] == 16 and set(calibration["counts"]) == {q["key"] for q in QUESTION_BANK}
    assert all(sum(sum(row.values()) for row in c.values()) == 16 for c in calibration["counts"].values())
    # a base built before the calibration step existed gets only that step from the same command
    (model / "answer_confusion.json").unlink()
    assert main(["bootstrap", "--world", str(world), "--out", str(model), "--size", "test", "--epochs", "1"]) == 0
    assert (model / "stage0_done.json").read_bytes() == stage0
    assert (model / "answers" / "answers_done.json").read_bytes() == answers
    assert json.loads((model / "answer_confusion.json").read_text())["counts"] == calibration["counts"]
    # one built before the answers adapter existed gets the adapter, and its answers are counted again
    shutil.rmtree(model / "answers")
    (model / "answer_confusion.json").write_text(json.dumps({"counts": {}}))
    assert main(["bootstrap", "--world", str(world), "--out", str(model), "--size", "test", "--epochs", "1"]) == 0
    assert (model / "stage0_done.json").read_bytes() == stage0 and (model / "answers" / "adapter_config.json").exists()
    assert json.loads((model / "answer_confusion.json").read_text())["counts"] == calibration["counts"]

    # a recipe file, every flag kind the generated options take on top of it, and --quantization, which `train`
    # passes itself; the resolved config beside the adapter reruns the same run
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("stage: stage1\nbatches: {ids_per_batch: 6}\nschedule: {epochs: 3, lr: 0.01}\n"
                      "loss: {learn_temperature: true}\n")
    run1 = tmp_path / "runs" / "stage1"
    assert main(["train", "stage1", "--config", str(recipe), "--model", str(tiny_base), "--world", str(tiny_world),
                 "--out", str(run1), "--epochs", "1", "--lr", "3e-4", "--no-learn-temperature", "--eval-split", "",
                 "--lora-target-modules", "q_proj", "v_proj"]) == 0
    steps = [json.loads(line) for line in (run1 / "metrics.jsonl").read_text().splitlines()]
    assert steps and (run1 / "adapter" / "lineup_embedder.json").exists()
    saved = yaml.safe_load((run1 / "resolved_config.yaml").read_text())
    assert saved["stage"] == "stage1" and saved["batches"]["ids_per_batch"] == 6  # from the file
    assert saved["schedule"] == {**saved["schedule"], "epochs": 1, "lr": 3e-4}  # flags override the file
    assert saved["model"]["lora_target_modules"] == ["q_proj", "v_proj"] and not saved["loss"]["learn_temperature"]
    assert saved["model"]["base_model"] == str(tiny_base) and saved["run"]["output_dir"] == str(run1)
    assert TrainConfig.from_recipe(run1 / "resolved_config.yaml", "stage1").schedule.lr == 3e-4

    run2 = tmp_path / "runs" / "stage2"
    assert main(["train", "stage2", "--model", str(tiny_base), "--adapter", str(tiny_adapter),
                 "--world", str(tiny_world), "--out", str(run2), "--epochs", "1", "--eval-split", ""]) == 0
    assert (run2 / "adapter" / "lineup_embedder.json").exists()

    assert main(["demo", "--fast", "--base", str(tmp_path / "no-base"), "--project", str(project)]) == 2
    assert main(["demo", "--fast", "--identities", "16", "--base", str(model), "--project", str(project)]) == 0
    report = json.loads((project / "reports" / "demo.json").read_text())
    assert {"eval", "thi", "search"} <= set(report)
    assert (project / "model" / "stage0_done.json").read_bytes() == stage0  # the base `bootstrap` built
    assert (project / "model" / "answer_confusion.json").exists()
    assert (project / "runs" / "stage2" / "adapter" / "lineup_embedder.json").exists()

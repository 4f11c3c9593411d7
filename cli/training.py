"""Training as the CLI shows it: a progress bar over `finetune.train.train` and the stage-0 summary table
(used by `lineup train`, `lineup bootstrap` and `lineup demo`)."""

from __future__ import annotations

import json
from pathlib import Path

from cli.ui import console, metrics_table, progress_bar


def run_training(stage: str, cfg) -> Path:
    """train() with a rich progress bar (loss, samples/s) and an evaluation table after each epoch."""
    from finetune.train import train

    with progress_bar(f"training {stage}", total=None) as advance:
        def callback(event: dict) -> None:
            if event["event"] == "step":
                advance(1, total=event["total_steps"], info=f"epoch {event['epoch']} loss {event['loss']:.3f} "
                                f"{event['samples_per_s']:.1f} samples/s")
            elif event["event"] == "eval":
                metrics = " · ".join(f"{k} {v:.1f}" for k, v in event.items()
                                     if k not in ("event", "step", "epoch") and isinstance(v, float))
                console.print(f"[dim]{stage} epoch {event['epoch']} ({cfg.run.eval_split}):[/] {metrics}")

        return train(stage, cfg, callback=callback)


def show_stage0(model_dir: Path) -> None:
    from finetune.answers import DONE_FILE as ANSWERS_DONE
    from mllm_embed.embedder import ANSWERS_DIR

    done = json.loads((model_dir / "stage0_done.json").read_text())
    row = {"final loss": done["loss_curve"][-1], "steps": done["steps"], "seconds": done["seconds"]}
    vision = model_dir / "vision_pretrain.json"
    if vision.exists():
        row["vision attr acc %"] = 100 * json.loads(vision.read_text()).get("held_out_mean_accuracy", 0.0)
    if "val_vqa" in done:
        row["val VQA acc %"] = 100 * done["val_vqa"]["accuracy"]
    answers = model_dir / ANSWERS_DIR / ANSWERS_DONE
    if answers.exists() and "val_vqa" in (got := json.loads(answers.read_text())):
        row["answers adapter val VQA %"] = 100 * got["val_vqa"]["answers"]["accuracy"]
    console.print(metrics_table(f"stage 0 — {model_dir}", {"base": row}))

"""The base's answers adapter: `MLLMEmbedder.answer` gets sharper eyes without the base the LoRA stages train on
changing.

Stage 0 teaches the language model to read a vision tower frozen after vision pre-training, so what the tower did
not learn from attribute labels no question can teach it. This step trains, on the world's VQA pairs only, a LoRA
on the language model with the vision tower and projector trained in full (`lora_vision="full"`: saved with the
adapter), so the answer's loss reaches the tower too. The adapter lives in the base folder (`ANSWERS_DIR`);
`load_embedder` answers every question with it and embeds without it, so stage adapters trained on the base stay
valid and their embeddings do not move. Questions about the head (`AnswersConfig.answers_head_attributes`) are
trained and asked on the image's head view (`mllm_embed.embedder.head_view`; the adapter lists them in
`HEAD_VIEW_FILE`). Attributes the adapter reads poorly at one epoch's share can be weighted up in its draw
(`AnswersConfig.answers_attribute_weights`). Writes `ANSWERS_DIR/answers_done.json` (loss curve, val VQA accuracy
of the base and of the adapter on the same questions).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from finetune.config import AnswersConfig, ModelConfig, Stage0Config
from finetune.loop import LoopSettings, accelerator_for, epoch_losses, fit
from finetune.stage0 import Judgements, LanguageModelling, _pairs, vqa_accuracy
from mllm_embed import load_embedder
from mllm_embed.embedder import ANSWERS_DIR, HEAD_FRACTION, HEAD_VIEW_FILE
from mllm_embed.errors import LineupError

logger = logging.getLogger(__name__)

DONE_FILE = "answers_done.json"  # inside ANSWERS_DIR
RUN_DIR = "answers_run"  # inside the model folder while the adapter trains


def train_answers(model_dir: str | Path, world_dir: str | Path, cfg: AnswersConfig | None = None,
                  progress: Callable[[int], None] | None = None) -> dict:
    """Train the answers adapter of the base in `model_dir` on the world's train split and save it into
    `model_dir/ANSWERS_DIR`, DONE_FILE last (the step is finished once it is there). Checkpoints into
    `model_dir/answers_run/` and continues a killed run."""
    from finetune.train import _lora_config

    cfg = cfg or AnswersConfig()
    model_dir, world_dir = Path(model_dir), Path(world_dir)
    started = time.time()
    lm = Stage0Config(epochs=cfg.answers_epochs, lr=cfg.answers_lr, questions_per_image=cfg.answers_questions_per_image,
                      attributes=(), caption_weight=0.0, match_pairs=0.0, train_vision=True,
                      save_every=cfg.answers_save_every, seed=cfg.answers_seed)
    qa, _ = _pairs(world_dir, "train", lm)
    if not qa:
        raise LineupError(f"{world_dir}: the train split has no VQA pairs (vqa.jsonl); the answers adapter needs them")
    asked = {attribute for *_, attribute in qa}
    for name in ("answers_head_attributes", "answers_attribute_weights"):
        unknown = sorted(set(getattr(cfg, name)) - asked)
        if unknown:
            raise LineupError(f"{name} (the bootstrap recipe's answers:): {', '.join(unknown)} not among the "
                              f"attributes of {world_dir}/vqa.jsonl's train pairs ({', '.join(sorted(asked))})")
    val, _ = _pairs(world_dir, "val", lm)
    random.Random(cfg.answers_seed).shuffle(val)
    val = val[: cfg.answers_eval_questions]
    final = model_dir / ANSWERS_DIR
    shutil.rmtree(final, ignore_errors=True)  # unfinished (no DONE_FILE): the base alone answers `before`
    torch.manual_seed(cfg.answers_seed)
    embedder = load_embedder(model_dir, dtype="fp32")
    before = vqa_accuracy(embedder, val) if val else None
    embedder.add_adapter(_lora_config(ModelConfig(base_model=str(model_dir), lora_r=cfg.answers_rank,
                                                  lora_alpha=2 * cfg.answers_rank, lora_vision="full")))
    weighted = [pair for pair in qa for _ in range(cfg.answers_attribute_weights.get(pair[3], 1))]
    objective = LanguageModelling(embedder, lm, weighted, [], Judgements([], embedder.config),
                                  cfg.answers_head_attributes)
    run = model_dir / RUN_DIR
    steps = fit(objective, LoopSettings(epochs=lm.epochs, max_grad_norm=lm.max_grad_norm, save_every=lm.save_every,
                                        resume=True), run, accelerator_for("no"), name="answers adapter",
                callback=progress and (lambda row: row["event"] == "step" and progress(1)))
    tmp = model_dir / (ANSWERS_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    embedder.model.eval()
    embedder.model.save_pretrained(tmp)
    (tmp / "README.md").unlink(missing_ok=True)  # peft's blank model card; answers_done.json says what this is
    head = sorted({question for _, question, _, attribute in qa if attribute in cfg.answers_head_attributes})
    (tmp / HEAD_VIEW_FILE).write_text(json.dumps({"questions": head, "fraction": HEAD_FRACTION}, indent=1))
    tmp.replace(final)
    result = {"loss_curve": epoch_losses(run), "steps": steps,
              "train_pairs": len(qa), "config": asdict(cfg)}
    if val:  # answered through the saved folder, as every later load of the base will
        result["val_vqa"] = {"base": before, "answers": vqa_accuracy(load_embedder(model_dir, dtype="fp32"), val)}
        logger.info("answers adapter: val VQA %.3f (the base alone %.3f)", result["val_vqa"]["answers"]["accuracy"],
                    before["accuracy"])
    result["seconds"] = round(time.time() - started, 1)
    (final / DONE_FILE).write_text(json.dumps(result, indent=2))
    shutil.rmtree(run)
    return result

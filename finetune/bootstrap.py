"""`lineup bootstrap`: the offline base from a world, in three resumable steps.

1. a locally trained tokenizer and an MLLM built from config (`mllm_embed.tiny`: a ResNet or ViT tower);
2. vision pre-training of its tower and projector on attributes and identities (`finetune.vision_pretrain`);
3. stage 0, generative pre-training of projector + LM on captions and VQA (`finetune.stage0`), checkpointed and
   resumed exactly when killed;
4. the answers adapter (`finetune.answers`): a LoRA with the tower trained in full, on VQA only, that every
   question is answered with while embeddings keep the base;
5. the answers' calibration: the finished base answers every bank question about held-out people, and how it
   answers each true value is counted (`retrieval.judge.answer_confusion`) into answer_confusion.json, which the
   answer re-ranking and THI weigh its answers by (`retrieval.judge.evidence`).
Each step leaves its marker file in the model folder; a re-run skips finished steps (so a base built before a step
existed gets it by running the same command again; new answers drop the old calibration, which then runs again).
The settings of each size are recipe files: recipes/bootstrap.yaml (tiny, small) and recipes/bootstrap-test.yaml.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

from finetune.answers import DONE_FILE as ANSWERS_DONE
from finetune.answers import train_answers
from finetune.config import BootstrapConfig, CalibrationConfig
from finetune.stage0 import DONE_FILE as STAGE0_DONE
from finetune.stage0 import pretrain
from finetune.vision_pretrain import DONE_FILE as VISION_DONE
from finetune.vision_pretrain import pretrain_vision
from mllm_embed.embedder import ANSWERS_DIR
from retrieval.judge import CONFUSION_FILE

# each step's marker file, in order
MARKERS = ("lineup_base.json", VISION_DONE, STAGE0_DONE, f"{ANSWERS_DIR}/{ANSWERS_DONE}", CONFUSION_FILE)

logger = logging.getLogger(__name__)


def finished(model_dir: str | Path) -> bool:
    """Whether every bootstrap step has run on the base in `model_dir`."""
    return all((Path(model_dir) / marker).exists() for marker in MARKERS)


def bootstrap_config(size: str, stage0_epochs: int | None = None, vision_steps: int | None = None) -> BootstrapConfig:
    """The size's recipe with the command line's overrides (validated: a bad value is one line naming its flag)."""
    overrides = {k: v for k, v in (("epochs", stage0_epochs), ("steps", vision_steps)) if v is not None}
    return BootstrapConfig.recipe(size).with_overrides(overrides)


def bootstrap_base(world_dir: str | Path, out_dir: str | Path, size: str = "tiny", stage0_epochs: int | None = None,
                   vision_steps: int | None = None, progress: Callable[[str, int], None] | None = None) -> Path:
    """Build (or finish building) the offline base in `out_dir` from the world in `world_dir`.
    `progress(step_name, n)` is called as work advances."""
    from finetune.data.world import world_texts
    from mllm_embed.tiny import build_tiny_base

    out = Path(out_dir)
    cfg = bootstrap_config(size, stage0_epochs, vision_steps)
    if not (out / "lineup_base.json").exists():
        build_tiny_base(world_texts(world_dir), out, size=size)
    if not (out / VISION_DONE).exists():
        pretrain_vision(out, world_dir, cfg.vision,
                        progress=progress and (lambda n: progress("vision pre-training", n)))
    if not (out / STAGE0_DONE).exists():
        pretrain(out, world_dir, cfg.stage0, progress=progress and (lambda n: progress("stage 0", n)))
    if not (out / ANSWERS_DIR / ANSWERS_DONE).exists():
        train_answers(out, world_dir, cfg.answers, progress=progress and (lambda n: progress("answers adapter", n)))
        (out / CONFUSION_FILE).unlink(missing_ok=True)  # it counted the answers of the base without the adapter
    if not (out / CONFUSION_FILE).exists():
        calibrate_answers(out, world_dir, cfg.calibration,
                          progress=progress and (lambda n: progress("answer calibration", n)))
    return out


def calibrate_answers(model_dir: str | Path, world_dir: str | Path, cfg: CalibrationConfig | None = None,
                      progress: Callable[[int], None] | None = None) -> dict:
    """Ask the base (`model_dir`) every bank question about up to ``cfg.calibration_images`` images of the world's
    val and test people (never trained on) and write its confusion counts and share of right answers per question
    to ``model_dir``/answer_confusion.json (written last, whole: it marks the step done)."""
    from finetune.data.world import QUESTION_BANK, answer_from_attributes
    from finetune.stage0 import split_people
    from mllm_embed import load_embedder
    from retrieval.judge import answer_confusion, bank_answerer, gallery_answers, world_vocabulary

    cfg = cfg or CalibrationConfig()
    start = time.time()
    people = [r for split in ("val", "test") for r in split_people(Path(world_dir), split)]
    people = random.Random(cfg.calibration_seed).sample(people, min(cfg.calibration_images, len(people)))
    vocabulary = world_vocabulary()
    answers = gallery_answers(bank_answerer(load_embedder(str(model_dir)), vocabulary), [r.image for r in people],
                              QUESTION_BANK, progress=progress)
    truths = {r.image: {q["key"]: answer_from_attributes(r.attributes, q["key"]) for q in QUESTION_BANK}
              for r in people}
    counts = answer_confusion(answers, truths, vocabulary)
    report = {"images": len(people), "seconds": round(time.time() - start, 1), "config": vars(cfg),
              "accuracy": {k: sum(row.get(t, 0) for t, row in c.items()) / sum(sum(r.values()) for r in c.values())
                           for k, c in counts.items()},
              "counts": counts}
    tmp = Path(model_dir) / (CONFUSION_FILE + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(Path(model_dir) / CONFUSION_FILE)
    return report

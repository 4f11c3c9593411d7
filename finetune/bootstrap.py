"""`lineup bootstrap`: the offline base from a world, in three resumable steps.

1. a locally trained tokenizer and a LLaVA-style model built from config (`mllm_embed.tiny`);
2. vision pre-training of its tower and projector on attributes and identities (`finetune.vision_pretrain`);
3. stage 0, generative pre-training of projector + LM on captions and VQA (`finetune.stage0`).
Each step leaves its marker file in the model folder; a re-run skips finished steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from finetune.stage0 import DONE_FILE as STAGE0_DONE
from finetune.stage0 import Stage0Config, pretrain
from finetune.vision_pretrain import DONE_FILE as VISION_DONE
from finetune.vision_pretrain import VisionPretrainConfig, pretrain_vision

logger = logging.getLogger(__name__)


def recipe(size: str) -> tuple[VisionPretrainConfig, Stage0Config]:
    """The vision pre-training and stage-0 settings each base size is built with."""
    if size == "test":
        return VisionPretrainConfig.for_tests(), Stage0Config.for_tests()
    # the tower already sees after vision pre-training: stage 0 teaches every question (and the caption-image match
    # judge) with it frozen
    return VisionPretrainConfig(), Stage0Config(epochs=3, attributes=(), questions_per_image=4, match_pairs=0.5,
                                                train_vision=False)


def bootstrap_base(world_dir: str | Path, out_dir: str | Path, size: str = "tiny", stage0_epochs: int | None = None,
                   vision_steps: int | None = None, progress: Callable[[str, int], None] | None = None) -> Path:
    """Build (or finish building) the offline base in `out_dir` from the world in `world_dir`.
    `progress(step_name, n)` is called as work advances."""
    from finetune.data.world import world_texts
    from mllm_embed.tiny import build_tiny_base

    out = Path(out_dir)
    vision, stage0 = recipe(size)
    if vision_steps is not None:
        vision = replace(vision, steps=vision_steps)
    if stage0_epochs is not None:
        stage0 = replace(stage0, epochs=stage0_epochs)
    if not (out / "lineup_base.json").exists():
        build_tiny_base(world_texts(world_dir), out, size=size)
    if not (out / VISION_DONE).exists():
        pretrain_vision(out, world_dir, vision,
                        progress=progress and (lambda n: progress("vision pre-training", n)))
    if not (out / STAGE0_DONE).exists():
        pretrain(out, world_dir, stage0, progress=progress and (lambda n: progress("stage 0", n)))
    return out

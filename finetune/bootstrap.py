"""`lineup bootstrap`: the offline base from a world, in three resumable steps.

1. a locally trained tokenizer and an MLLM built from config (`mllm_embed.tiny`: a ResNet or ViT tower);
2. vision pre-training of its tower and projector on attributes and identities (`finetune.vision_pretrain`);
3. stage 0, generative pre-training of projector + LM on captions and VQA (`finetune.stage0`), checkpointed and
   resumed exactly when killed.
Each step leaves its marker file in the model folder; a re-run skips finished steps. The settings of each size are
recipe files: recipes/bootstrap.yaml (tiny, small) and recipes/bootstrap-test.yaml.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from finetune.config import BootstrapConfig
from finetune.stage0 import DONE_FILE as STAGE0_DONE
from finetune.stage0 import pretrain
from finetune.vision_pretrain import DONE_FILE as VISION_DONE
from finetune.vision_pretrain import pretrain_vision

logger = logging.getLogger(__name__)


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
    return out

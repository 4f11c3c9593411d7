"""Session fixtures: one tiny world and one tiny pre-trained base shared by the whole suite.

Set LINEUP_TEST_CACHE=/some/dir during development to reuse them across pytest runs (CI builds fresh).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))


def _cache_dir(tmp_path_factory, name: str) -> Path:
    root = os.environ.get("LINEUP_TEST_CACHE")
    if root:
        path = Path(root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A small synthetic world: 48 identities x 4 images (owner: finetune.data.world)."""
    from finetune.data.world import WorldConfig, generate_world

    out = _cache_dir(tmp_path_factory, "world")
    if not (out / "world.json").exists():
        generate_world(out, WorldConfig(identities=48, images_per_id=4, seed=7))
    return out


@pytest.fixture(scope="session")
def tiny_base(tiny_world, tmp_path_factory) -> Path:
    """A tiny LLaVA-style base with a local tokenizer, briefly stage-0 pre-trained (owner: mllm_embed.tiny
    + finetune.stage0). Loaded through exactly the path a hub checkpoint takes."""
    from finetune.stage0 import Stage0Config, pretrain
    from finetune.data.world import world_texts
    from mllm_embed.tiny import build_tiny_base

    out = _cache_dir(tmp_path_factory, "base")
    if not (out / "config.json").exists() or not (out / "stage0_done.json").exists():
        build_tiny_base(world_texts(tiny_world), out, size="test")
        pretrain(out, tiny_world, Stage0Config.for_tests())
    return out


@pytest.fixture(scope="session")
def tiny_adapter(tiny_base, tiny_world, tmp_path_factory) -> Path:
    """A stage-1 LoRA adapter on the tiny base (~160 steps, about 40 s): shared by the training tests and the
    end-to-end tests that search with it. Its run folder (metrics.jsonl) is the adapter's parent."""
    from finetune.config import TrainConfig
    from finetune.train import train

    out = _cache_dir(tmp_path_factory, "stage1")
    adapter = out / "adapter"
    if not (adapter / "lineup_embedder.json").exists():
        train("stage1", TrainConfig.of(base_model=str(tiny_base), data=str(tiny_world), output_dir=str(out),
                                    epochs=40, eval_split=""))
    return adapter

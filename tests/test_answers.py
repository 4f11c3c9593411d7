"""The base's answers adapter (`finetune.answers`): questions are answered better with it, embeddings never see it."""

from __future__ import annotations

import json
import shutil

import numpy as np

from finetune.answers import DONE_FILE, train_answers
from finetune.config import BootstrapConfig
from finetune.data import load_split, load_vqa
from mllm_embed import load_embedder
from mllm_embed.embedder import ANSWERS_DIR


def test_the_answers_adapter_answers_better_and_leaves_embeddings_alone(tiny_base, tiny_world, tiny_adapter, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    cfg = BootstrapConfig.recipe("test").answers
    result = train_answers(base, tiny_world, cfg)
    assert json.loads((base / ANSWERS_DIR / DONE_FILE).read_text())["steps"] == result["steps"] > 0
    assert not (base / "answers_run").exists()  # a finished step leaves only the adapter
    vqa = result["val_vqa"]  # the same val questions; the adapter's through a fresh load of the base folder
    assert vqa["answers"]["n"] == vqa["base"]["n"] == cfg.answers_eval_questions
    assert vqa["answers"]["accuracy"] > vqa["base"]["accuracy"] + 0.05, vqa

    images = [r.image for r in load_split(tiny_world, "test")[:6]]
    plain, answering = load_embedder(tiny_base), load_embedder(base)
    np.testing.assert_array_equal(plain.encode_images(images), answering.encode_images(images))
    caption = ["a man in a red shirt"]
    np.testing.assert_array_equal(plain.encode_text(caption), answering.encode_text(caption))

    # with a stage adapter loaded on the base, questions still go to the answers adapter, not to the stage's LoRA
    staged = load_embedder(base, adapter=tiny_adapter)
    asked = [(r.image, r.question) for r in load_vqa(tiny_world, "val")[:12]]
    assert [staged.answer(i, q) for i, q in asked] == [answering.answer(i, q) for i, q in asked]
    assert staged._answerer is not None and plain._answerer is None

"""The base's answers adapter (`finetune.answers`): questions are answered better with it, embeddings never see it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from finetune.answers import DONE_FILE, train_answers
from finetune.config import BootstrapConfig, Stage0Config
from finetune.data import load_split, load_vqa
from mllm_embed import load_embedder
from mllm_embed.embedder import ANSWERS_DIR, HEAD_VIEW_FILE, head_view, load_image
from mllm_embed.errors import LineupError


def test_the_answers_adapter_answers_better_and_leaves_embeddings_alone(tiny_base, tiny_world, tiny_adapter, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    cfg = BootstrapConfig.recipe("test").answers
    result = train_answers(base, tiny_world, cfg)
    assert json.loads((base / ANSWERS_DIR / DONE_FILE).read_text())["steps"] == result["steps"] > 0
    # every pair once (answers_questions_per_image 0), a weighted attribute's pairs as many times as its weight
    weights = cfg.answers_attribute_weights
    assert weights and not cfg.answers_questions_per_image
    listed = sum(weights.get(r.attribute, 1) for r in load_vqa(tiny_world, "train"))
    batch = Stage0Config().batch_size
    assert result["steps"] == -(-listed // batch) > -(-result["train_pairs"] // batch)
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

    # questions about the head are asked about the head view, in training and after: it is all the adapter sees
    head = {r.question for r in load_vqa(tiny_world, "train") if r.attribute in cfg.answers_head_attributes}
    assert answering.head_questions == head and plain.head_questions == frozenset()
    pairs = [(r.image, r.question) for r in load_vqa(tiny_world, "val") if r.question in head][:6]
    seen = [answering.answer(i, q) for i, q in pairs]
    answering.head_questions = frozenset()
    assert seen == [answering.answer(head_view(load_image(i)), q) for i, q in pairs]

    (base / ANSWERS_DIR / HEAD_VIEW_FILE).write_text("{")
    with pytest.raises(LineupError, match=HEAD_VIEW_FILE + ": unreadable"):
        load_embedder(base)


def test_the_head_view_is_the_top_centre_of_a_pedestrian_crop_at_its_aspect():
    image = Image.new("RGB", (128, 256), "white")
    image.paste("black", (54, 10, 74, 40))  # a head: top centre
    view = head_view(image)
    assert view.size == (51, 102)
    assert np.asarray(view)[10:40, 16:36].max() == 0 and np.asarray(view)[50:].min() == 255


def test_a_head_attribute_the_world_never_asks_about_is_refused_before_training(tiny_base, tiny_world, tmp_path):
    from dataclasses import replace

    cfg = replace(BootstrapConfig.recipe("test").answers, answers_head_attributes=("hair_color", "tattoo"))
    with pytest.raises(LineupError, match=r"answers_head_attributes .*: tattoo not among the attributes of"):
        train_answers(tiny_base, tiny_world, cfg)
    cfg = replace(BootstrapConfig.recipe("test").answers, answers_attribute_weights={"glasses": 3, "tattoo": 2})
    with pytest.raises(LineupError, match=r"answers_attribute_weights .*: tattoo not among the attributes of"):
        train_answers(tiny_base, tiny_world, cfg)
    with pytest.raises(LineupError, match="answers-attribute-weights must map attributes to whole numbers"):
        replace(cfg, answers_attribute_weights={"glasses": 0.5})
    assert not (tiny_base / ANSWERS_DIR).exists()


def test_an_epoch_plan_holds_paths_and_its_batches_show_head_questions_the_head_view(tiny_base, tiny_world):
    """`LanguageModelling.plan` keeps no pixels (an epoch of the shipped recipe would hold ~28,000 crops); `batch`
    renders them: the head view for a head attribute's question, two crops side by side for a same-person pair."""
    from finetune.stage0 import Judgements, LanguageModelling, _pairs, split_people
    from mllm_embed.embedder import side_by_side

    cfg = Stage0Config(questions_per_image=0, same_pairs=0.5, match_pairs=0.5)
    embedder = load_embedder(tiny_base)
    qa, captions = _pairs(tiny_world, "val", cfg)
    objective = LanguageModelling(embedder, cfg, qa[:40], captions[:8],
                                  Judgements(split_people(tiny_world, "val")[:16], embedder.config), ("hair_color",))
    objective.begin_epoch(0, resumed=False)
    plan = objective._plan[1]
    items = [item for batch in plan for item in batch]
    assert all(not isinstance(x, Image.Image) for item in items for x in item)
    assert any(head for _, head, *_ in items) and any(isinstance(image, tuple) for image, *_ in items)
    for position, planned in enumerate(plan):
        _, shown = objective.batch(0, position)
        for (image, head, question, answer), (pixels, q, a) in zip(planned, shown, strict=True):
            assert (q, a) == (question, answer)
            want = (side_by_side(load_image(image[0]), load_image(image[1])) if isinstance(image, tuple)
                    else head_view(load_image(image)) if head else load_image(image))
            assert pixels.size == want.size and np.array_equal(np.asarray(pixels), np.asarray(want))
    asked_about_head = {q for _, q, _, attribute in qa[:40] if attribute == "hair_color"}
    assert {question for _, head, question, _ in items if head} == asked_about_head

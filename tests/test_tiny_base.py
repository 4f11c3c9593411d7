"""The offline tiny base: loads like a hub checkpoint, and stage 0 teaches it to see and answer."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from mllm_embed import load_embedder

VQA_ATTRIBUTES = ("upper_color", "lower_color", "hair_length")


def test_loads_through_auto_classes_like_a_hub_checkpoint(tiny_base, tiny_world, tmp_path):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_base)
    model = AutoModelForImageTextToText.from_pretrained(tiny_base).eval()
    assert type(processor).__name__ == "LlavaProcessor" and type(model).__name__ == "LlavaForConditionalGeneration"
    tok = processor.tokenizer
    for special in ("<image>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1, special
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert 300 < len(tok) <= 4096
    caption = json.loads((tiny_world / "annotations.jsonl").read_text().splitlines()[0])["captions"][0]
    assert tok.decode(tok(caption)["input_ids"]) == caption
    assert len(tok(caption)["input_ids"]) < len(caption) / 2.5  # a real BPE, not bytes
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the person."}]}],
        add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>user\n<image>") and prompt.endswith("<|im_start|>assistant\n")

    image = Image.open(tiny_world / json.loads((tiny_world / "vqa.jsonl").read_text().splitlines()[0])["image"])
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**AutoProcessor.from_pretrained(tmp_path)(
            text=[prompt], images=[image], return_tensors="pt")).logits, logits)


def test_stage0_loss_falls(tiny_base):
    done = json.loads((tiny_base / "stage0_done.json").read_text())
    curve = done["loss_curve"]
    assert len(curve) >= 2 and curve[-1] < 0.6 * curve[0]
    assert done["train_pairs"]["vqa"] > 0 and done["train_pairs"]["captions"] > 0


@pytest.mark.slow
def test_answers_vqa_about_held_out_people(tiny_base, tiny_world):
    rows = [json.loads(line) for line in (tiny_world / "vqa.jsonl").read_text().splitlines()]
    embedder = load_embedder(tiny_base, device="cpu")
    for attribute in VQA_ATTRIBUTES:
        train = Counter(r["answer"] for r in rows if r["split"] == "train" and r["attribute"] == attribute)
        test = [r for r in rows if r["split"] == "test" and r["attribute"] == attribute]
        majority = train.most_common(1)[0][0]
        chance = sum(r["answer"] == majority for r in test) / len(test)
        hits = [embedder.answer(tiny_world / r["image"], r["question"]) == r["answer"] for r in test]
        accuracy = sum(hits) / len(hits)
        assert accuracy >= max(0.5, chance + 0.2), (attribute, accuracy, chance)

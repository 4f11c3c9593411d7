"""Every family a published MLLM embedder is built on, end to end on a scaled-down random-weight checkpoint
(mllm_embed.scaled): `--model FOLDER` → one stage-1 and one stage-2 epoch through `lineup train` → adapter
reload → embed text / image / image+modification → `answer()` → `lineup index` → `lineup search`."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from cli.main import main
from mllm_embed.scaled import list_scaled


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """12 identities × 2 images at 128×64: 8 train identities, 12 train triplets."""
    from finetune.data.world import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("family_world")
    generate_world(out, WorldConfig(identities=12, images_per_id=2, seed=3, height=128, width=64))
    return out


def _needs(family: str):
    if family == "smolvlm" and importlib.util.find_spec("num2words") is None:
        pytest.skip("SmolVLM's processor needs num2words: pip install num2words")


@pytest.mark.parametrize("family", list_scaled())
def test_family_trains_reloads_indexes_and_searches(family, small_world, tmp_path, capsys):
    _needs(family)
    from finetune.data import load_split
    from mllm_embed import load_embedder
    from mllm_embed.scaled import build_scaled
    from finetune.data.world import world_texts

    base = build_scaled(family, world_texts(small_world), tmp_path / "base")
    project = ["--project", str(tmp_path / "project")]
    common = ["--model", str(base), "--world", str(small_world), "--eval-split", "", *project]
    assert main(["train", "stage1", *common, "--out", str(tmp_path / "s1"), "--epochs", "1",
                 "--ids-per-batch", "4", "--images-per-id", "2"]) == 0
    assert main(["train", "stage2", *common, "--adapter", str(tmp_path / "s1" / "adapter"),
                 "--out", str(tmp_path / "s2"), "--epochs", "1", "--batch-size", "4", "--stage1-mix", "0.5",
                 "--ids-per-batch", "4"]) == 0
    adapter = tmp_path / "s2" / "adapter"

    embedder = load_embedder(base, adapter=adapter, device="cpu")
    model_type = json.loads((base / "config.json").read_text())["model_type"]
    assert model_type == family and model_type in embedder.family.model_types
    test = load_split(small_world, "test")
    image = test[0].image
    vectors = [embedder.encode_text(["a woman in a red coat", "a man"]), embedder.encode_images([image, test[1].image]),
               embedder.encode_composed([(image, "with a blue bag")])]
    for v in vectors:
        assert v.dtype == np.float32 and v.shape[1] == embedder.dim
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    again = load_embedder(base, adapter=adapter, device="cpu").encode_images([image])
    np.testing.assert_allclose(again, vectors[1][:1], atol=1e-5)  # the saved adapter reloads exactly
    bare = load_embedder(base, device="cpu").encode_images([image])
    assert not np.allclose(bare, again, atol=1e-4)  # and it is what changed the embedding
    assert isinstance(embedder.answer(image, "What color is the shirt?"), str)

    qdrant = ["--qdrant-path", str(tmp_path / "qdrant"), "--model", str(base), "--adapter", str(adapter), *project]
    assert main(["index", *qdrant, "--dataset", str(small_world)]) == 0
    capsys.readouterr()
    assert main(["search", *qdrant, "--image", image, "-k", "2", "--no-preview"]) == 0
    first = next(line for line in capsys.readouterr().out.splitlines() if line.lstrip("│ ").startswith("1 "))
    assert image.rsplit("/", 1)[1] in first and "1.000" in first  # the photo finds itself
    assert main(["search", *qdrant, "--image", image, "--modify", "with a blue bag", "--no-preview"]) == 0
    assert main(["search", *qdrant, "--text", "a woman in a red coat", "--no-preview"]) == 0


def test_unknown_scaled_family_lists_the_valid_ones(tmp_path):
    from mllm_embed.errors import LineupError
    from mllm_embed.scaled import build_scaled

    with pytest.raises(LineupError, match="qwen2_vl"):
        build_scaled("phi3_v", ["a"], tmp_path)


# ------------------------------------------------------------------------------------------ prompt styles


def test_prompt_styles_build_the_published_formats(tiny_base):
    from mllm_embed import load_embedder
    from mllm_embed.config import PROMPT_STYLES, EmbedderConfig

    for style in PROMPT_STYLES:
        assert EmbedderConfig.from_style(style).prompt_style == style  # every preset passes validation
    decode = lambda e, batch: e.tokenizer.decode(batch["input_ids"][0])  # noqa: E731
    gme = load_embedder(tiny_base, prompt_style="gme", device="cpu")
    text = decode(gme, gme.text_batch(["a man in a red coat"]))
    assert text.startswith("<|im_start|>system\nFind an image that matches the given text.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n<|endoftext|>")  # GME appends <|endoftext|>, pools it
    assert "You are a helpful assistant." in decode(gme, gme.image_batch([_image()]))
    vlm2vec = load_embedder(tiny_base, prompt_style="vlm2vec", device="cpu")
    text = decode(vlm2vec, vlm2vec.text_batch(["a man"]))
    assert text == "Find me an everyday image that matches the given caption: a man"  # raw text, no chat turns
    e5v = load_embedder(tiny_base, prompt_style="e5v", device="cpu")
    assert decode(e5v, e5v.text_batch(["a man"])).endswith("a man\nSummary above sentence in one word:"
                                                           "<|im_end|>\n<|im_start|>assistant\n")
    v = [e.encode_text(["a man in a red coat"]) for e in (gme, vlm2vec, e5v)]
    assert not np.allclose(v[0], v[1]) and not np.allclose(v[1], v[2])  # the preset changes the embedding


def _image():
    from PIL import Image

    return Image.new("RGB", (64, 128), (200, 30, 30))


def test_a_collection_refuses_queries_with_another_prompt_style(tiny_base, tiny_adapter, tmp_path):
    from mllm_embed import load_embedder
    from mllm_embed.errors import LineupError
    from retrieval.engine import SearchEngine
    from retrieval.store import open_store

    image = tmp_path / "p.png"
    _image().save(image)
    with open_store(path=tmp_path / "q") as store:
        SearchEngine(load_embedder(tiny_base, prompt_style="e5v", device="cpu"), store, "g").index_images(
            [{"image": str(image)}])
        other = SearchEngine(load_embedder(tiny_base, prompt_style="gme", device="cpu"), store, "g")
        assert store.get_meta("g")["prompt_style"] == "e5v"
        with pytest.raises(LineupError, match="was built with prompt"):
            other.search_text("a man")
    with pytest.raises(LineupError, match="trained with --prompt-style lineup"):
        load_embedder(tiny_base, adapter=tiny_adapter, prompt_style="gme")


# --------------------------------------------------------------------------------- LamRA-style merge-init


def test_stage2_merge_init_and_continue_both_train_and_reload(tiny_base, tiny_world, tiny_adapter, tmp_path):
    from peft import PeftModel

    from mllm_embed import load_embedder
    from mllm_embed.errors import LineupError

    common = ["--model", str(tiny_base), "--world", str(tiny_world), "--adapter", str(tiny_adapter),
              "--max-steps", "2", "--eval-split", "", "--project", str(tmp_path)]
    assert main(["train", "stage2", *common, "--out", str(tmp_path / "merged"), "--merge-init"]) == 0
    assert main(["train", "stage2", *common, "--out", str(tmp_path / "continued")]) == 0
    merged, continued = tmp_path / "merged" / "adapter", tmp_path / "continued" / "adapter"
    assert (merged / "merged" / "0" / "adapter_model.safetensors").exists()
    assert not (continued / "merged").exists()

    image = [_image()]
    got = load_embedder(tiny_base, adapter=merged, device="cpu").encode_images(image)
    # by hand: base + stage 1 merged into the weights, then the new stage-2 LoRA
    by_hand = load_embedder(tiny_base, adapter=tiny_adapter, device="cpu")
    by_hand.model = PeftModel.from_pretrained(by_hand.model.merge_and_unload(), str(merged)).eval()
    np.testing.assert_allclose(got, by_hand.encode_images(image), atol=1e-5)
    stage1 = load_embedder(tiny_base, adapter=tiny_adapter, device="cpu").encode_images(image)
    cont = load_embedder(tiny_base, adapter=continued, device="cpu").encode_images(image)
    assert not np.allclose(got, stage1, atol=1e-4) and not np.allclose(cont, stage1, atol=1e-4)

    weights = merged / "merged" / "0" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(LineupError, match="does not match the hash"):
        load_embedder(tiny_base, adapter=merged)


def test_gpu_check_smoke_on_cpu(tmp_path):
    """benchmarks/gpu_check.py --device cpu: every section runs (throughput, stage-1 step with sdpa and with
    gradient checkpointing, QLoRA 4-bit) and the JSON holds positive figures."""
    from _env import benchmark

    gpu_check = benchmark("gpu_check")
    out = gpu_check.main(["--device", "cpu", "--batch", "2", "--n", "4", "--ids", "2", "--repeats", "1",
                          "--out", str(tmp_path / "gpu.json")])
    results = out["results"]
    assert [r.get("error") for r in results.values()] == [None] * 4
    assert results["throughput"]["images"]["embedder_per_s"] > 0 and results["throughput"]["texts"]["overhead"] > 0
    assert all(results[s]["seconds_per_step"] > 0 for s in ("stage1_sdpa", "stage1_checkpointing", "qlora_4bit"))
    assert (tmp_path / "gpu.json").exists()


def test_prompts_survive_hub_style_chat_templates(tiny_base):
    """Hub multimodal templates (llava-hf, Idefics3) read typed content parts and drop plain strings; older
    templates concatenate strings and fail on parts. The prompt must come through both."""
    from mllm_embed import load_embedder

    emb = load_embedder(tiny_base, device="cpu")
    parts_only = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] | "
                  "selectattr('type', 'equalto', 'text') %}{{ c['text'] }}{% endfor %} {% endfor %}ASSISTANT:")
    strings_only = "{% for m in messages %}[{{ m['role'] + ']' + m['content'] }}{% endfor %}>"
    for template, expected in ((parts_only, "USER: a man\nSummarize the person described in one word: ASSISTANT:"),
                               (strings_only, "[user]a man\nSummarize the person described in one word:>")):
        emb.tokenizer.chat_template = template
        emb._pieces.clear()
        assert emb.tokenizer.decode(emb.text_batch(["a man"])["input_ids"][0]) == expected

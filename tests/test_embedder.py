"""MLLMEmbedder on the tiny pre-trained base: shapes, batch invariance, adapters, quantization, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune.data import load_split
from mllm_embed import EmbedderConfig, LineupError, load_embedder, resolve_dtype
from mllm_embed.embedder import IMAGE, PAD, PROMPT, TEXT, content_mean_pool, last_token_pool, train_mode


def _records(world, n=16):
    return [(r.image, r.captions[0]) for r in load_split(world, "all")[:n]]


@pytest.fixture(scope="module")
def embedder(tiny_base):
    return load_embedder(tiny_base, device="cpu")


def _lora(init=False):
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=init)


def test_three_encoders_give_normalised_vectors(embedder, tiny_world):
    recs = _records(tiny_world, 5)
    seen = []
    outs = [embedder.encode_images([p for p, _ in recs], batch_size=2, progress=seen.append),
            embedder.encode_text([c for _, c in recs]),
            embedder.encode_composed([(p, "wearing a red shirt") for p, _ in recs])]
    assert sum(seen) == 5
    for out in outs:
        assert out.shape == (5, embedder.dim) and out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
        assert np.abs(out[0] - out[1]).max() > 1e-3  # different inputs, different vectors
    # composed input depends on the modification text
    a, b = embedder.encode_composed([(recs[0][0], "red shirt"), (recs[0][0], "a long blue coat and black hat")])
    assert np.abs(a - b).max() > 1e-3


def test_batch_of_one_matches_batch_of_sixteen(embedder, tiny_world):
    recs = _records(tiny_world, 16)
    texts = [c if i % 3 else c + " and more words here" for i, (_, c) in enumerate(recs)]
    for encode, items in ((embedder.encode_text, texts), (embedder.encode_images, [p for p, _ in recs]),
                          (embedder.encode_composed, [(p, t[:30]) for (p, _), t in zip(recs, texts)])):
        one = np.stack([encode([item], batch_size=1)[0] for item in items])
        np.testing.assert_allclose(encode(items, batch_size=16), one, atol=1e-4)


def test_last_token_pool_handles_left_and_right_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_pool(hidden, right)[:, 0].tolist() == [1.0, 7.0]
    assert last_token_pool(hidden, left)[:, 0].tolist() == [3.0, 7.0]


def test_content_mean_pool_averages_only_the_input_tokens():
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    kinds = torch.tensor([[PROMPT, IMAGE, IMAGE, PROMPT, PAD], [PROMPT, IMAGE, TEXT, TEXT, PROMPT]])
    # row 0: its two image tokens; row 1: its image token (6) and the mean of its two text tokens (7.5), averaged
    assert content_mean_pool(hidden, kinds)[:, 0].tolist() == [1.5, (6.0 + 7.5) / 2]


def test_mean_pooling_embeds_the_input_tokens_and_round_trips_with_the_adapter(tiny_base, tiny_world, tmp_path):
    import dataclasses

    recs = _records(tiny_world, 4)
    emb = load_embedder(tiny_base, device="cpu")
    last = emb.encode_composed([(p, "red shirt") for p, _ in recs])
    emb.config = dataclasses.replace(emb.config, pooling="mean")
    batch = emb.composed_batch([(p, "red shirt") for p, _ in recs])
    with emb.inference():
        hidden, kinds = emb.hidden_states(batch)
    expected = torch.nn.functional.normalize(content_mean_pool(hidden, kinds), dim=-1).numpy()
    mean = emb.encode_composed([(p, "red shirt") for p, _ in recs])
    np.testing.assert_allclose(mean, expected, atol=1e-5)
    assert np.abs(mean - last).max() > 1e-2
    emb.add_adapter(_lora())
    emb.save_adapter(tmp_path / "adapter")
    again = load_embedder(tiny_base, adapter=tmp_path / "adapter", device="cpu")
    assert again.config.pooling == "mean"
    np.testing.assert_allclose(again.encode_images([p for p, _ in recs]), emb.encode_images([p for p, _ in recs]),
                               atol=1e-5)
    config = json.loads((tmp_path / "adapter" / "lineup_embedder.json").read_text())
    (tmp_path / "adapter" / "lineup_embedder.json").write_text(json.dumps({**config, "pooling": "max"}))
    with pytest.raises(LineupError, match=r"lineup_embedder.json: EmbedderConfig.pooling must be one of"):
        load_embedder(tiny_base, adapter=tmp_path / "adapter", device="cpu")


def test_composed_image_tokens_read_the_modification(tiny_base, tiny_world):
    """The `modification-first` prompt style puts the modification before the image, so under causal attention
    the image tokens (half of a mean-pooled composed embedding) change with it."""
    emb = load_embedder(tiny_base, device="cpu")
    emb.config = emb.config.with_style("modification-first")
    image = _records(tiny_world, 1)[0][0]
    batch = emb.composed_batch([(image, "a red coat instead of the blue one"), (image, "no hat")])
    with emb.inference():
        hidden, kinds = emb.hidden_states(batch)
    for row in kinds:
        assert (row == TEXT).nonzero().min() < (row == IMAGE).nonzero().min()
    first, second = (hidden[i][kinds[i] == IMAGE].mean(0) for i in range(2))
    assert not torch.allclose(first, second, atol=1e-4)


def test_hidden_states_mark_image_patches_and_caption_words(embedder, tiny_world):
    (path, caption), = _records(tiny_world, 1)
    batch = embedder.composed_batch([(path, caption), (path, "red")])
    hidden, kinds = embedder.hidden_states(batch, layer=1)
    assert hidden.shape[:2] == kinds.shape and hidden.shape[2] == embedder.dim
    n_image = (kinds == IMAGE).sum(1).tolist()
    assert n_image[0] == n_image[1] > 0
    assert (kinds[1] == PAD).any() and not (kinds[0] == PAD).any()
    words = batch["word_ids"][0][kinds[0] == TEXT]
    assert sorted(set(words.tolist())) == list(range(len(caption.split())))
    # the first word's tokens decode to that word
    first = batch["input_ids"][0][batch["word_ids"][0] == 0]
    assert embedder.tokenizer.decode(first).strip() == caption.split()[0]


def test_lm_batch_labels_only_the_answer(embedder, tiny_world):
    (path, _), = _records(tiny_world, 1)
    batch = embedder.lm_batch([(path, "What color is the person's hair?", "black")])
    labels = batch["labels"][0][batch["labels"][0] != -100]
    assert embedder.tokenizer.decode(labels, skip_special_tokens=True).strip() == "black"
    loss = embedder.lm_loss(batch)
    assert torch.isfinite(loss) and loss.requires_grad


def test_adapter_save_reload_and_wrong_base(tiny_base, tiny_world, tmp_path):
    from mllm_embed.tiny import build_tiny_base

    recs = _records(tiny_world, 4)
    base = load_embedder(tiny_base, device="cpu")
    before = base.encode_text([c for _, c in recs])
    base.add_adapter(_lora())
    tuned = base.encode_text([c for _, c in recs])
    assert np.abs(tuned - before).max() > 1e-3  # the adapter changes the embeddings
    base.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    again = load_embedder(tiny_base, adapter=tmp_path / "adapter", device="cpu")
    np.testing.assert_allclose(again.encode_text([c for _, c in recs]), tuned, atol=1e-5)
    np.testing.assert_allclose(again.encode_images([p for p, _ in recs]),
                               base.encode_images([p for p, _ in recs]), atol=1e-5)

    other = build_tiny_base(["a man in a red shirt", "what color is the shirt?", "red"] * 20, tmp_path / "other",
                            size="test")
    with pytest.raises(LineupError, match="adapter was trained on base"):
        load_embedder(other, adapter=tmp_path / "adapter", device="cpu")


def test_answer_ignores_the_embedding_adapter(tiny_base, tiny_world):
    """answer() generates with a loaded LoRA adapter disabled: an adapter whose weights are perturbed hard
    changes the logits but not the answers."""
    rows = [json.loads(line) for line in (tiny_world / "vqa.jsonl").read_text().splitlines()][:6]
    asked = [(str(tiny_world / r["image"]), r["question"]) for r in rows]
    emb = load_embedder(tiny_base, device="cpu")
    before = [emb.answer(image, question) for image, question in asked]
    batch = emb._to_device(emb.lm_batch([(asked[0][0], asked[0][1], None)]))
    with emb.inference():
        base_logits = emb.model(**batch).logits
    emb.add_adapter(_lora())
    torch.manual_seed(0)
    with torch.no_grad():
        for name, weight in emb.model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 1.0)
    with emb.inference():
        assert (emb.model(**batch).logits - base_logits).abs().max() > 1.0  # the adapter does change the model
    assert [emb.answer(image, question) for image, question in asked] == before


def test_view_consensus_averages_the_views_and_spells_only_options():
    """Every row (view) gets the views' mean log-probabilities; with options, only tokens continuing one."""
    from mllm_embed.embedder import _ViewConsensus

    scores = torch.tensor([[2.0, 0.0, 1.0, 0.0, 0.0], [0.0, 3.0, 1.0, 0.0, 0.0]])
    prompt = torch.zeros(2, 3, dtype=torch.long)
    mean = torch.log_softmax(scores, -1).mean(0)
    free = _ViewConsensus(3, [])(prompt, scores)
    assert torch.allclose(free[0], mean) and torch.allclose(free[1], mean)
    options = [[2, 4], [3, 0, 4]]  # two spellings (4: eos); token 1 wins the mean but spells no option
    first = _ViewConsensus(3, options)(prompt, scores)
    assert first[0].argmax() == 2 and torch.isinf(first[0, [0, 1, 4]]).all()
    after_3 = _ViewConsensus(3, options)(torch.cat([prompt, torch.full((2, 1), 3)], 1), scores)
    assert torch.isfinite(after_3[0]).tolist() == [True, False, False, False, False]


def test_answer_with_options_names_one_and_views_ask_about_the_image(embedder, tiny_world):
    """`answer(options=...)` returns an option even where the free answer is another word; `views=True` asks
    about four views of the image (mirror and moved copies) and still answers from the options."""
    from PIL import Image

    from mllm_embed.embedder import answer_views

    row = json.loads((tiny_world / "vqa.jsonl").read_text().splitlines()[0])
    image, question = tiny_world / row["image"], row["question"]
    free = embedder.answer(image, question)
    others = [w for w in ("red", "blue", "green", "black") if w != free][:2]
    assert embedder.answer(image, question, options=others) in others
    assert embedder.answer(image, question, options=[free, *others], views=True) in [free, *others]
    shown = Image.open(image).convert("RGB")
    views = answer_views(shown)
    assert len(views) == 4 and all(v.size == shown.size for v in views)
    assert np.array_equal(np.asarray(views[1])[:, ::-1], np.asarray(shown))


def test_4bit_base_runs_lora_forward_and_backward(tiny_base, tiny_world):
    recs = _records(tiny_world, 3)
    full = load_embedder(tiny_base, device="cpu").encode_images([p for p, _ in recs])
    q = load_embedder(tiny_base, device="cpu", quantization="4bit")
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in q.model.modules())
    kept = [n for n, p in q.model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n]
    assert kept and all(q.model.get_parameter(n).dtype.is_floating_point for n in kept)  # the family's skip list
    quant = q.encode_images([p for p, _ in recs])
    assert np.mean(np.sum(full * quant, axis=1)) > 0.8  # NF4 keeps the embedding close
    q.add_adapter(_lora(init=True))
    train_mode(q.model)  # on AVX512-BF16 CPUs, also undoes bitsandbytes' inference repacking of the weights
    loss = 1 - q.embed(q.composed_batch([(p, "red shirt") for p, _ in recs])).sum(1).mean()
    loss.backward()
    grads = [p.grad for n, p in q.model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_user_errors_name_the_input(embedder, tiny_base, tiny_world, tmp_path):
    (path, _), = _records(tiny_world, 1)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(LineupError, match="broken.png"):
        embedder.encode_images([path, bad])
    with pytest.raises(LineupError, match="missing.png"):
        embedder.encode_composed([(tmp_path / "missing.png", "red")])
    with pytest.raises(LineupError, match=r"texts\[1\]"):
        embedder.encode_text(["a man", "  "])
    with pytest.raises(LineupError, match="config.json"):
        load_embedder(tmp_path / "no-model")
    with pytest.raises(LineupError, match="quantization"):
        load_embedder(tiny_base, quantization="2bit")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(LineupError, match="llava"):
        load_embedder(tmp_path / "bert")
    with pytest.raises(LineupError, match="precision"):
        resolve_dtype("fp8")
    with pytest.raises(ValueError, match="image_prompt"):
        EmbedderConfig(image_prompt="no image here")


def _tiny_qwen2_vl(path):
    """A tiny Qwen2-VL checkpoint built from config (tokenizer with the family's vision tokens)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from mllm_embed.tiny import train_tokenizer

    tok = train_tokenizer(["a red shirt and blue jeans", "what color is the shirt?"] * 20, 300)
    tok.add_special_tokens({"additional_special_tokens": ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]})
    tok.image_token = "<|image_pad|>"  # the processor counts this token; train_tokenizer's is LLaVA's "<image>"
    ids = tok.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"])
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id,
                         bos_token_id=None, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14),
        vision_start_token_id=ids[0], image_token_id=ids[1], vision_end_token_id=ids[2])
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 56).save_pretrained(path)
    return tok


def _noise_images(n):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (128, 64, 3), dtype=np.uint8)) for _ in range(n)]


def test_qwen2_vl_family_forward_and_pooling(tmp_path):
    """The Qwen2-VL registry entry loads and embeds even where its full processor cannot load."""
    _tiny_qwen2_vl(tmp_path)

    emb = load_embedder(tmp_path, device="cpu")
    assert emb.family.name == "qwen2_vl" and emb.dim == 64
    images = _noise_images(3)
    batch = emb.image_batch(images[:1])
    assert (batch["token_kinds"] == IMAGE).sum() == int(batch["image_grid_thw"][0].prod()) // 4 + 2
    vecs = emb.encode_images(images)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    pairs = [(images[0], "red"), (images[1], "a long blue coat with a hat")]
    np.testing.assert_allclose(emb.encode_composed(pairs, batch_size=2)[0], emb.encode_composed(pairs[:1])[0],
                               atol=1e-4)
    assert isinstance(emb.answer(images[0], "what color is the shirt?", max_new_tokens=2), str)




def test_qwen2_vl_full_processor_agrees_on_image_tokens(tmp_path):
    pytest.importorskip("torchvision", reason="Qwen2-VL's full processor needs torchvision (absent here)")
    from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor

    tok = _tiny_qwen2_vl(tmp_path)
    emb = load_embedder(tmp_path, device="cpu")
    image = _noise_images(1)
    processor = Qwen2VLProcessor(image_processor=emb.family.image_processor, tokenizer=tok,
                                 video_processor=Qwen2VLVideoProcessor())
    ids = processor(text="<|vision_start|><|image_pad|><|vision_end|>", images=image)["input_ids"][0]
    assert (emb.image_batch(image)["token_kinds"] == IMAGE).sum() == len(ids)


def test_bf16_precision_string_gives_close_float32_vectors(embedder, tiny_base, tiny_world):
    paths = [p for p, _ in _records(tiny_world, 4)]
    half = load_embedder(tiny_base, device="cpu", dtype="bf16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    out = half.encode_images(paths)
    assert out.dtype == np.float32
    assert np.min(np.sum(out * embedder.encode_images(paths), axis=1)) > 0.99

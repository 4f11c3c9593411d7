import numpy as np
import pytest

from finetune.augment import (
    attribute_phrase,
    balanced_choice,
    decompose,
    enrich,
    faithfulness_filter,
    rda,
)
from mllm_embed.errors import LineupError

CAPTION = "A woman with long black hair, wearing a red jacket and blue jeans. She carries a backpack."
ATTRS = {"gender": "female", "hair_length": "long", "hair_color": "black", "upper_color": "red",
         "lower_color": "blue", "shoes_color": "white", "hat": "yes", "glasses": "no"}


def test_decompose_splits_into_attribute_clauses():
    assert decompose(CAPTION) == ["a woman with long black hair", "wearing a red jacket", "blue jeans",
                                  "she carries a backpack"]


def test_enrich_adds_only_missing_attributes():
    clauses = decompose(CAPTION)
    out = enrich(clauses, ATTRS, np.random.default_rng(0), max_new=5)
    added = out[len(clauses):]
    assert set(added) <= {"the shoes color is white", "wearing hat", "no glasses", "the gender is female"}
    assert len(added) == 4  # black/long/red/blue are already mentioned
    assert attribute_phrase("bag", "none") == "no bag" and attribute_phrase("shoes", "unknown") is None


def test_rda_is_deterministic_per_seed_and_keeps_every_clause():
    a, b, c = rda(CAPTION, ATTRS, seed=1), rda(CAPTION, ATTRS, seed=1), rda(CAPTION, ATTRS, seed=2)
    assert a == b
    outs = {rda(CAPTION, ATTRS, seed=s) for s in range(10)}
    assert len(outs) > 3  # order and enrichment vary across seeds
    for clause in decompose(CAPTION):
        assert clause in a.lower() and clause in c.lower()
    assert a.startswith("A woman with long black hair") and a.endswith(".")
    assert rda(CAPTION, None, seed=0).lower().count(",") + rda(CAPTION, None, seed=0).count(";") >= 3


def test_bss_mixes_at_the_configured_ratio():
    rng = np.random.default_rng(0)
    picks = [balanced_choice("orig", ["rw1", "rw2"], 0.3, rng) for _ in range(4000)]
    assert picks.count("orig") / 4000 == pytest.approx(0.7, abs=0.03)
    assert picks.count("rw1") == pytest.approx(picks.count("rw2"), rel=0.2)
    assert balanced_choice("orig", [], 1.0, rng) == "orig"
    assert all(balanced_choice("o", ["r"], 0.0, rng) == "o" for _ in range(50))


def _bag_of_words(texts):
    vocab = ["man", "woman", "red", "blue", "shirt", "jeans", "cat", "moon", "pizza"]
    m = np.array([[t.lower().split().count(w) for w in vocab] for t in texts], dtype=float) + 1e-6
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_tff_keeps_faithful_rewrites_and_reports_counts():
    originals = ["a man in a red shirt", "a woman in blue jeans", "a man in blue jeans"]
    rewrites = ["red shirt worn by a man", "the cat eats pizza on the moon", ""]
    kept, cos, report = faithfulness_filter(_bag_of_words, originals, rewrites, threshold=0.8)
    assert kept == [0]
    assert (report.kept, report.dropped) == (1, 2)
    assert cos[0] == pytest.approx(1.0, abs=1e-6) and cos[1] < 0.1 and cos[2] == -1.0
    with pytest.raises(LineupError, match="rewrites"):
        faithfulness_filter(_bag_of_words, originals, rewrites[:2])


def test_answers_map_onto_the_attribute_vocabulary_and_fill_templates():
    from finetune.augment import answers_to_attributes
    from finetune.data.world import ATTRIBUTES, CAPTION_TEMPLATES, describe

    answers = {"gender": "female", "hair_length": "long", "upper_type": "a red jacket", "upper_color": "red",
               "lower_type": "jeans", "bag": "none", "bag_color": "blue", "hat": "cap", "glasses": "???"}
    attrs, unknown = answers_to_attributes(answers)
    assert attrs["upper_type"] == "jacket" and attrs["bag_color"] == "none" and attrs["hat"] == "cap"
    assert set(attrs) == set(ATTRIBUTES) and all(attrs[k] in ATTRIBUTES[k] for k in attrs)
    assert unknown == len(ATTRIBUTES) - 8  # 8 answers named a value ("???" and the missing keys did not)
    caption = describe(attrs, np.random.default_rng(0), CAPTION_TEMPLATES[0])
    assert "jacket" in caption or "red" in caption


@pytest.fixture(scope="module")
def tiny_rewriter(tiny_base, tmp_path_factory):
    """A tiny random Qwen2 causal LM with the tiny base's tokenizer (any causal LM folder works)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("rewriter")
    tok = AutoTokenizer.from_pretrained(str(tiny_base))
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_rewrite_with_any_causal_lm_then_tff_with_the_embedder(tiny_base, tiny_rewriter):
    from finetune.augment import rewrite_captions
    from mllm_embed import load_embedder

    captions = ["a man in a red shirt and blue jeans", "a woman with long black hair", "a person with a backpack"]
    a = rewrite_captions(tiny_rewriter, captions, max_new_tokens=8, seed=1)
    assert len(a) == 3 and all(isinstance(x, str) for x in a)
    assert rewrite_captions(tiny_rewriter, captions, max_new_tokens=8, seed=1) == a  # seeded sampling
    emb = load_embedder(tiny_base)
    rewrites = [captions[0], "", a[2] or "zzz"]
    kept, cos, report = faithfulness_filter(emb, captions, rewrites, threshold=0.999)
    assert 0 in kept and 1 not in kept and report.kept + report.dropped == 3
    assert cos[0] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(LineupError, match="caption"):
        rewrite_captions(tiny_rewriter, captions, prompt="Rewrite this.")


def test_tde_captions_from_the_tiny_base_follow_templates(tiny_base, tiny_world):
    from finetune.augment import caption_images
    from finetune.data.world import ATTRIBUTES
    from mllm_embed import load_embedder

    emb = load_embedder(tiny_base)
    images = sorted((tiny_world / "images").glob("*.png"))[:2]
    first = caption_images(emb, images, per_image=2, seed=3)
    assert first == caption_images(emb, images, per_image=2, seed=3)
    values = {v for vs in ATTRIBUTES.values() for v in vs if v != "none"}
    for captions in first:
        templated = captions[-2:]
        assert len(templated) == 2 and templated[0] != templated[1]  # two different templates
        assert all(any(v in c.lower() for v in values) for c in templated)
    with pytest.raises(LineupError, match="per_image"):
        caption_images(emb, images, templates=["{person}"], per_image=2)

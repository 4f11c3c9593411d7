"""Caption augmentation: TDE captioning, LLM-DA rewriting with a faithfulness filter and balanced sampling,
and RDA (enrich, decompose, reorganise). Everything random takes a seed or a numpy Generator.

- TDE ("Harnessing the Power of MLLMs for Transferable T2I ReID"): caption images with an MLLM following
  diverse templates, so sentence structure does not become a shortcut.
- LLM-DA ("Data Augmentation for Text-based Person Retrieval Using LLMs"): rewrite captions with a causal LM,
  keep only rewrites whose embedding stays close to the original (TFF), and mix originals and rewrites at a
  fixed ratio (BSS).
- RDA ("Human-centered Interactive Learning via MLLMs for T2I ReID"): enrich a description with attribute
  phrases, decompose it into clauses and reorganise their order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.data.text import words
from mllm_embed.errors import LineupError

log = logging.getLogger(__name__)

REWRITE_PROMPT = "Rewrite this image caption: {caption}\nRewritten caption:"
DESCRIBE_PROMPT = "Describe the person."


# ---------------------------------------------------------------------------------------------------- RDA


def _words_of(value: str) -> str:
    return str(value).replace("_", " ").strip().lower()


def attribute_phrase(key: str, value: str) -> str | None:
    """A short clause for one attribute, e.g. ("upper_color", "red") → "the upper garment is red".
    Values meaning absence ("none", "no") give None for accessories without a useful negative phrase."""
    key_words, value_words = _words_of(key), _words_of(value)
    if value_words in ("", "unknown", "null"):
        return None
    if value_words in ("none", "no", "false"):
        return f"no {key_words}" if key in ("hat", "glasses", "bag") else None
    if value_words in ("yes", "true"):
        return f"wearing {key_words}" if key in ("hat", "glasses") else f"has a {key_words}"
    parts = key_words.split()
    if len(parts) == 2 and parts[1] in ("color", "colour", "length", "type"):
        return f"the {parts[0]} {parts[1]} is {value_words}"
    return f"the {key_words} is {value_words}"


def decompose(caption: str) -> list[str]:
    """Split a description into attribute clauses at sentence marks, commas, semicolons and "and"."""
    parts = re.split(r"[.;,!?]+|\band\b|\bwhile\b", caption)
    return [p.strip().lower() for p in parts if p.strip()]


def enrich(clauses: Sequence[str], attributes: dict[str, str] | None, rng: np.random.Generator,
           max_new: int = 2) -> list[str]:
    """Append up to `max_new` phrases for attributes whose value the clauses do not mention yet."""
    if not attributes:
        return list(clauses)
    text = " ".join(clauses)
    candidates = [phrase for key, value in sorted(attributes.items())
                  if (phrase := attribute_phrase(key, value)) and _words_of(value) not in text]
    picked = rng.permutation(len(candidates))[:max_new]
    return list(clauses) + [candidates[i] for i in sorted(picked)]


def reorganize(clauses: Sequence[str], rng: np.random.Generator) -> str:
    """Shuffle the clauses (the first, usually the subject, stays first) and join them into one sentence."""
    if not clauses:
        return ""
    head, rest = clauses[0], [clauses[i] for i in rng.permutation(len(clauses) - 1) + 1]
    joiners = rng.choice([", ", "; ", ", and "], size=len(rest))
    text = head + "".join(j + c for j, c in zip(joiners, rest))
    return text[0].upper() + text[1:] + "."


def rda(caption: str, attributes: dict[str, str] | None = None, seed: int | np.random.Generator = 0,
        max_new: int = 2) -> str:
    """Reorganisation data augmentation: enrich with attribute phrases, decompose, reorganise."""
    rng = np.random.default_rng(seed)
    return reorganize(enrich(decompose(caption), attributes, rng, max_new), rng)


# ------------------------------------------------------------------------------------------------- TDE


def _snap(value: str, vocabulary: Sequence[str]) -> str | None:
    """The vocabulary value an answer names (exact, else the longest value contained in it), or None."""
    value = value.strip().lower()
    if value in vocabulary:
        return value
    contained = [v for v in vocabulary if v != "none" and v in value]
    return max(contained, key=len) if contained else None


def answers_to_attributes(answers: dict[str, str]) -> tuple[dict[str, str], int]:
    """Map VQA answers onto the world's attribute vocabulary; returns (attributes, number of answers that named
    no known value and fell back to the vocabulary's first entry)."""
    from finetune.data.world import ATTRIBUTES

    attrs, unknown = {}, 0
    for key, vocabulary in ATTRIBUTES.items():
        value = _snap(answers.get(key, ""), vocabulary)
        unknown += value is None
        attrs[key] = value or vocabulary[0]
    if attrs["bag"] == "none":
        attrs["bag_color"] = "none"
    elif attrs["bag_color"] == "none":
        attrs["bag_color"] = ATTRIBUTES["bag_color"][1]
    return attrs, unknown


def caption_images(
    embedder,
    images: Sequence,
    templates: Sequence[str] | None = None,
    per_image: int = 2,
    seed: int = 0,
    max_new_tokens: int = 64,
    progress: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """TDE captioning: `per_image` captions per image, each following a different template (seeded choice).

    Ask "Describe the person." (kept as a caption when the model answers) and the question bank, map the
    answers onto the attribute vocabulary and fill the slot templates (default: the world's CAPTION_TEMPLATES)."""
    from finetune.data.world import CAPTION_TEMPLATES, QUESTION_BANK, describe
    from retrieval.judge import bank_answerer

    templates = list(templates or CAPTION_TEMPLATES)
    if per_image < 1 or per_image > len(templates):
        raise LineupError(f"per_image={per_image}: must be between 1 and the number of templates ({len(templates)})")
    rng = np.random.default_rng(seed)
    out, unknown = [], 0
    ask = bank_answerer(embedder)
    for image in images:
        chosen = [templates[i] for i in rng.choice(len(templates), size=per_image, replace=False)]
        answers = {q["key"]: ask(image, q["question"]) for q in QUESTION_BANK}
        attrs, n_unknown = answers_to_attributes(answers)
        unknown += n_unknown
        free = embedder.answer(image, DESCRIBE_PROMPT, max_new_tokens)
        captions = ([free] if len(words(free)) >= 3 else []) + [describe(attrs, rng, t) for t in chosen]
        out.append([c for c in captions if c.strip()])
        if progress:
            progress(1)
    if unknown:
        log.info("TDE: %d answers named no known attribute value (fell back to defaults)", unknown)
    return out


# ---------------------------------------------------------------------------------------------- LLM-DA


@dataclass
class FilterReport:
    kept: int
    dropped: int
    threshold: float


def faithfulness_filter(
    encode: Callable[[list[str]], np.ndarray] | object,
    originals: Sequence[str],
    rewrites: Sequence[str],
    threshold: float = 0.8,
) -> tuple[list[int], np.ndarray, FilterReport]:
    """Text faithfulness filter (TFF): keep rewrite i when cos(embed(original_i), embed(rewrite_i)) ≥ threshold.

    `encode` is an embedder (its `encode_text` is used) or a function texts → L2-normalised (n, d) array.
    Returns (indices kept, all cosines, report); empty rewrites are dropped without embedding.
    """
    if len(originals) != len(rewrites):
        raise LineupError(f"faithfulness filter: {len(originals)} originals but {len(rewrites)} rewrites")
    encode_fn = getattr(encode, "encode_text", encode)
    cos = np.full(len(originals), -1.0)
    live = [i for i, r in enumerate(rewrites) if r.strip()]
    if live:
        a = np.asarray(encode_fn([originals[i] for i in live]))
        b = np.asarray(encode_fn([rewrites[i] for i in live]))
        cos[live] = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    kept = [i for i in range(len(originals)) if cos[i] >= threshold]
    report = FilterReport(kept=len(kept), dropped=len(originals) - len(kept), threshold=threshold)
    log.info("TFF: kept %d, dropped %d rewrites (threshold %.2f)", report.kept, report.dropped, threshold)
    return kept, cos, report


def balanced_choice(original: str, rewrites: Sequence[str], ratio: float, rng: np.random.Generator) -> str:
    """Balanced sampling (BSS): a rewrite with probability `ratio` when the caption has one, else the original."""
    if rewrites and rng.random() < ratio:
        return rewrites[int(rng.integers(len(rewrites)))]
    return original


def rewrite_captions(
    rewriter_model_path: str | Path,
    captions: Sequence[str],
    prompt: str = REWRITE_PROMPT,
    max_new_tokens: int = 48,
    temperature: float = 0.7,
    seed: int = 0,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Rewrite each caption with any Hugging Face causal LM (LLM-DA). Uses the tokenizer's chat template when it
    has one; sampling is seeded. Returns one rewrite per caption (possibly empty: filter with TFF)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if "{caption}" not in prompt:
        raise LineupError("rewrite prompt: must contain a {caption} slot")
    from safetensors import SafetensorError

    from mllm_embed.files import check_model_source, check_model_weights

    check_model_source(str(rewriter_model_path), role="--rewriter")
    check_model_weights(str(rewriter_model_path), role="--rewriter")
    try:  # nothing from the folder runs: no remote code, safetensors weights only
        tokenizer = AutoTokenizer.from_pretrained(str(rewriter_model_path), trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(str(rewriter_model_path), trust_remote_code=False,
                                                     use_safetensors=True)
    except (OSError, ValueError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise LineupError(f"--rewriter {rewriter_model_path}: not a causal LM folder or hub id ({first})") from None
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [prompt.format(caption=c) for c in captions]
    if tokenizer.chat_template:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True) for t in texts]
    torch.manual_seed(seed)
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None,
                                 pad_token_id=tokenizer.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        out += [t.strip().split("\n")[0].strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        if progress:
            progress(len(new))
    return out

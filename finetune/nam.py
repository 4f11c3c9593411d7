"""Noise-aware masking (NAM, "Harnessing the Power of MLLMs for Transferable Text-to-Image Person ReID").

Each epoch, every caption token gets a noise level r_i = 1 − max_j cos(t_i, v_j) between its hidden state t_i
and the image-patch hidden states v_j of a chosen layer; token scores are pooled into word scores, and in the
next epoch noisy words are masked with a higher probability than clean ones (at the same average rate as
uniform masking). The pure tensor/array parts live here; `estimate_word_noise` runs the embedder.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch

from finetune.data import PersonImage, words
from finetune.losses import word_patch_similarity

MASK_MODES = ("nam", "uniform", "none")


def token_noise(text_hidden: torch.Tensor, image_hidden: torch.Tensor) -> torch.Tensor:
    """r_i = 1 − max_j cos(t_i, v_j) for text tokens (T, h) against image patches (M, h) → (T,)."""
    ones = [torch.ones(1, len(h), dtype=torch.bool, device=h.device) for h in (text_hidden, image_hidden)]
    return 1.0 - word_patch_similarity(text_hidden[None], ones[0], image_hidden[None], ones[1])[0, 0]


def word_scores(token_scores: Sequence[float], token_words: Sequence[int | None], n_words: int) -> np.ndarray:
    """Pool token scores into word scores (max over a word's tokens); `token_words[k]` is the word index of
    token k or None (prompt/special). Words without a token get the mean of the others."""
    out = np.full(n_words, np.nan)
    for score, w in zip(token_scores, token_words):
        if w is not None and 0 <= w < n_words:
            out[w] = score if np.isnan(out[w]) else max(out[w], score)
    fill = np.nanmean(out) if np.isfinite(out).any() else 0.0
    return np.where(np.isnan(out), fill, out)


def calibrate(captions: Sequence[str], scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Subtract each word type's mean score over the corpus: a word is judged against other occurrences of the
    same word ("red" on a red shirt vs "red" on a blue one), not against "the" or "person". Words are
    `finetune.data.text.words`: "Shirt." and "shirt" are one word type."""
    split = [words(c) for c in captions]
    by_word: dict[str, list[float]] = defaultdict(list)
    for ws, s in zip(split, scores):
        for word, v in zip(ws, s):
            by_word[word].append(float(v))
    means = {w: float(np.mean(v)) for w, v in by_word.items()}
    return [np.asarray(s, dtype=float) - np.array([means[w] for w in ws]) for ws, s in zip(split, scores)]


def mask_probabilities(noise: np.ndarray, rate: float, mode: str = "nam", sharpness: float = 3.0) -> np.ndarray:
    """Per-word masking probabilities with mean ≈ `rate`: proportional to exp(sharpness · z(noise)) for "nam",
    constant for "uniform", zero for "none". Capped at 0.9 (the excess goes to the other words)."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    noise = np.asarray(noise, dtype=float)
    if mode == "none" or rate <= 0 or noise.size == 0:
        return np.zeros_like(noise)
    if mode == "uniform" or noise.std() < 1e-8:
        return np.full_like(noise, rate)
    weights = np.exp(sharpness * (noise - noise.mean()) / noise.std())
    budget, cap = rate * len(noise), 0.9
    probs = np.zeros_like(noise)
    free = np.ones(len(noise), dtype=bool)
    while free.any():  # water-filling: capped words pass their excess on to the others
        remaining = budget - probs[~free].sum()
        probs[free] = remaining * weights[free] / weights[free].sum()
        over = free & (probs > cap)
        if not over.any():
            break
        probs[over], free = cap, free & ~over
    return probs


def mask_caption(caption: str, probabilities: np.ndarray, rng: np.random.Generator,
                 mask_token: str | None = None) -> str:
    """Drop (or replace with `mask_token`) each word with its probability; never returns an empty caption."""
    tokens = caption.split()  # word i of `words(caption)`, as written
    keep = rng.random(len(tokens)) >= np.asarray(probabilities)[: len(tokens)]
    if not keep.any():
        return caption
    return " ".join(w if k else mask_token for w, k in zip(tokens, keep) if k or mask_token is not None)


def noise_auc(scores: Sequence[np.ndarray], noisy_words: Sequence[Sequence[int]]) -> float:
    """AUC of word noise scores ranking the truly wrong words above the correct ones (0.5 = chance)."""
    from retrieval.metrics import roc_auc

    flat, labels = [], []
    for s, wrong in zip(scores, noisy_words):
        wrong = set(wrong)
        flat += list(s)
        labels += [int(i in wrong) for i in range(len(s))]
    return float(roc_auc(np.asarray(flat), np.asarray(labels)))


class NoiseAwareMasker:
    """Holds the latest word-noise estimates (keyed by e.g. (image, caption) index) and masks captions.

    "nam" masks each word with a probability growing with its estimated noise, "uniform" with the same
    average rate everywhere (also "nam" for captions without an estimate yet), "none" never."""

    def __init__(self, rate: float = 0.15, mode: str = "nam", sharpness: float = 3.0):
        if mode not in MASK_MODES:
            raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
        if not 0 <= rate < 1:
            raise ValueError(f"mask rate must be in [0, 1), got {rate}")
        self.rate, self.mode, self.sharpness = rate, mode, sharpness
        self.noise: dict[Hashable, np.ndarray] = {}

    def update(self, keys: Sequence[Hashable], scores: Sequence[np.ndarray]) -> None:
        self.noise.update({k: np.asarray(s, dtype=float) for k, s in zip(keys, scores)})

    def __call__(self, caption: str, rng: np.random.Generator, key: Hashable | None = None) -> str:
        if self.mode == "none":
            return caption
        n = len(words(caption))
        noise = self.noise.get(key) if self.mode == "nam" and key is not None else None
        if noise is None or len(noise) != n:
            noise = np.zeros(n)
        return mask_caption(caption, mask_probabilities(noise, self.rate, self.mode, self.sharpness), rng)

    def state_dict(self) -> dict:
        return {"noise": [(k, s.tolist()) for k, s in self.noise.items()]}

    def load_state_dict(self, state: dict) -> None:
        self.noise = {tuple(k) if isinstance(k, list) else k: np.asarray(s, dtype=float) for k, s in state["noise"]}


def estimate_word_noise(embedder, pairs: Sequence[tuple], layer: int = -1, joint: bool = True,
                        center: bool = True, batch_size: int = 16, progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Word noise scores for (image, caption) pairs from the embedder's hidden states at `layer`.

    joint=True: one forward of image + caption (the composed prompt with the caption in its slot), caption
    tokens against the image patches of the same sequence; joint=False: caption tokens of the text prompt
    against patches of the image prompt (two forwards, the paper's two-tower setting). center=True subtracts
    the batch mean of caption-token and of patch states first (hidden states share a large common direction
    that otherwise dominates every cosine)."""
    from mllm_embed.embedder import IMAGE, TEXT

    out: list[np.ndarray] = []
    with embedder.inference():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            text_batch = (embedder.composed_batch(list(chunk)) if joint
                          else embedder.text_batch([c for _, c in chunk]))
            text_h, text_kinds = embedder.hidden_states(text_batch, layer)
            if joint:
                image_h, image_kinds = text_h, text_kinds
            else:
                image_h, image_kinds = embedder.hidden_states(embedder.image_batch([i for i, _ in chunk]), layer)
            text_mean = text_h[text_kinds == TEXT].mean(0) if center else 0.0
            image_mean = image_h[image_kinds == IMAGE].mean(0) if center else 0.0
            for row, (_, caption) in enumerate(chunk):
                is_text = text_kinds[row] == TEXT
                r = token_noise(text_h[row][is_text] - text_mean, image_h[row][image_kinds[row] == IMAGE] - image_mean)
                token_words = text_batch["word_ids"][row][is_text.cpu()].tolist()
                out.append(word_scores(r.cpu().tolist(), [w if w >= 0 else None for w in token_words],
                                       len(words(caption))))
            if progress:
                progress(len(chunk))
    return out


def detection_auc(embedder, records: Sequence[PersonImage], layer: int = -1, joint: bool = True, per_image: int = 2,
                  seed: int = 0) -> float:
    """How well NAM's calibrated word noise ranks injected wrong words above correct ones (AUC, 0.5 = chance)
    on freshly corrupted captions of world `records` (`finetune.data.world.noisy_variants`), calibrated over
    those and the records' clean captions."""
    from finetune.data.world import noisy_variants

    noisy = noisy_variants(list(records), per_image, seed)
    pairs = [(image, text) for image, text, _ in noisy] + [(r.image, c) for r in records for c in r.captions]
    scores = calibrate([c for _, c in pairs], estimate_word_noise(embedder, pairs, layer, joint, batch_size=32))
    return noise_auc(scores[:len(noisy)], [wrong for _, _, wrong in noisy])

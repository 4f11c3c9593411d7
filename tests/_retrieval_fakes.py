"""A small deterministic stand-in for MLLMEmbedder (attribute one-hot vectors) and a matching toy gallery.

It keeps the retrieval tests model-free: the embedding of a text is the one-hot of the attribute words
it mentions; an image's embedding is the one-hot of its person's attributes plus a little per-image noise.
So a text naming every attribute of a person ranks that person first, and a vaguer one leaves ties.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

VOCAB = {
    "gender": ["man", "woman"],
    "upper_color": ["red", "blue", "green", "yellow"],
    "upper_type": ["tshirt", "coat", "sweater"],
    "lower_color": ["black", "white", "grey", "brown"],
    "lower_type": ["jeans", "skirt", "shorts"],
    "hat": ["hat", "bareheaded"],
}
SLOTS = [(a, v) for a, values in VOCAB.items() for v in values]
BANK = [{"key": a, "question": f"What is the person's {a.replace('_', ' ')}?"} for a in VOCAB]
JUDGE = "Can this text accurately describe the image?"


def words_to_attrs(text: str) -> dict[str, str]:
    words = set(text.lower().replace(",", " ").replace(".", " ").replace(":", " ").split())
    return {a: v for a, values in VOCAB.items() for v in values if v in words}


def onehot(attrs: dict[str, str]) -> np.ndarray:
    return np.array([1.0 if attrs.get(a) == v else 0.0 for a, v in SLOTS], dtype=np.float32)


def caption(attrs: dict[str, str], keys=None) -> str:
    return " ".join(attrs[k] for k in (keys or VOCAB))


@dataclass
class _Cfg:
    base_model: str = "fake-onehot"
    base_fingerprint: str = "fake-onehot-v1"
    image_prompt: str = "<image>"
    text_prompt: str = "{text}"
    composed_prompt: str = "<image>{modification}"
    common_prompt: str = ""
    match_question: str = JUDGE + " Text: {text} Answer Yes or No."
    verify_question: str = "Are these two the same person? Answer yes or no."


class FakeEmbedder:
    """encode_text / encode_images / encode_composed / answer, like mllm_embed.MLLMEmbedder."""

    def __init__(self, attrs_by_image: dict[str, dict[str, str]], noise: float = 0.05, dim_pad: int = 0):
        self.attrs_by_image = {str(k): v for k, v in attrs_by_image.items()}
        self.noise = noise
        self.dim = len(SLOTS) + dim_pad
        self.config = _Cfg()
        self.calls = {"image": 0, "text": 0, "composed": 0, "answer": 0}

    def _pad_norm(self, x: np.ndarray, key: str | None) -> np.ndarray:
        x = np.concatenate([x, np.zeros(self.dim - len(x), np.float32)])
        if key is not None and self.noise:
            seed = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
            x = x + self.noise * np.random.default_rng(seed).normal(size=x.shape).astype(np.float32)
        n = np.linalg.norm(x)
        return x / n if n > 0 else x

    def _attrs(self, image) -> dict[str, str]:
        return self.attrs_by_image[str(image)]

    def encode_text(self, texts, batch_size=16, progress=None):
        self.calls["text"] += len(texts)
        return np.stack([self._pad_norm(onehot(words_to_attrs(t)), None) for t in texts])

    def encode_images(self, images, batch_size=16, progress=None):
        self.calls["image"] += len(images)
        return np.stack([self._pad_norm(onehot(self._attrs(i)), str(i)) for i in images])

    def encode_composed(self, pairs, batch_size=16, progress=None):
        self.calls["composed"] += len(pairs)
        out = [self._pad_norm(onehot({**self._attrs(i), **words_to_attrs(m)}), str(i) + m) for i, m in pairs]
        return np.stack(out)

    def answer(self, image, question, max_new_tokens=8):
        self.calls["answer"] += 1
        if isinstance(image, Image.Image):  # side-by-side pair from verification: compare the two halves
            left, right = image.info["pair"]
            return "yes" if self._attrs(left) == self._attrs(right) else "no"
        attrs = self._attrs(image)
        if question.startswith(JUDGE):
            said = words_to_attrs(question[len(JUDGE):])
            return "yes" if all(attrs.get(a) == v for a, v in said.items()) else "no"
        for q in BANK:
            if q["question"] == question:
                return attrs[q["key"]]
        return "unknown"


def make_gallery(root: Path, identities: int = 24, per_id: int = 3, seed: int = 0):
    """Tiny PNG files + records (loader columns) for identities with distinct attribute combinations."""
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(*VOCAB.values()))
    chosen = rng.choice(len(combos), size=identities, replace=False)
    root.mkdir(parents=True, exist_ok=True)
    records, attrs_by_image = [], {}
    for pid, idx in enumerate(chosen):
        attrs = dict(zip(VOCAB, combos[idx]))
        for k in range(per_id):
            path = root / f"{pid:05d}_c{k}_{k:02d}.png"
            if not path.exists():
                Image.new("RGB", (4, 8), (pid * 9 % 255, k * 60, 100)).save(path)
            records.append({"image": str(path), "person_id": pid, "camera_id": k, "split": "test",
                            "captions": [caption(attrs)], "attributes": attrs})
            attrs_by_image[str(path)] = attrs
    return records, attrs_by_image

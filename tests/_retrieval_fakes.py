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

from finetune.data import PersonImage, Triplet

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

    def match_prompt(self, text: str) -> str:
        return self.match_question.replace("{text}", text)


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

    def answer(self, image, question, max_new_tokens=8, options=None, views=False):
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
    """Tiny PNG files + their records for identities with distinct attribute combinations."""
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
            records.append(PersonImage(image=str(path), person_id=pid, camera_id=k, split="test",
                                       captions=(caption(attrs),), attributes=attrs))
            attrs_by_image[str(path)] = attrs
    return records, attrs_by_image


class TableEmbedder:
    """Hand-set embeddings: image vectors by path, text vectors by string, composed vectors by modification."""

    def __init__(self, images: dict[str, list[float]], texts: dict[str, list[float]],
                 composed: dict[str, list[float]]):
        self.images, self.texts, self.composed = images, texts, composed

    def encode_images(self, images, batch_size=16, progress=None):
        return np.array([self.images[str(i)] for i in images], dtype=np.float32)

    def encode_text(self, texts, batch_size=16, progress=None):
        return np.array([self.texts[t] for t in texts], dtype=np.float32)

    def encode_composed(self, pairs, batch_size=16, progress=None):
        return np.array([self.composed[m] for _, m in pairs], dtype=np.float32)


def hand_composed_case(root: Path):
    """Four gallery images (one-hot vectors) — a0 of person 1, b0 and b1 of person 2, c0 of person 3 — and four
    triplets whose similarity rows are set by hand (the column of the reference image is excluded):

      q1: ref a0 → target b1 (person 2)   sims a0 .9  b0 .8  b1 .5  c0 .6   exact rank 3, person rank 1
      q2: ref c0 → target b0 (person 2)   sims a0 .7  b0 .6  b1 .2  c0 .95  exact rank 2, person rank 2
      q3: ref b0 → target image not in the gallery, person 3: sims .1 .99 .3 .5 → person rank 1, no exact rank
      q4: target person 9 is not in the gallery → skipped

    Each image has two captions: its own one-hot (finds it first) and c0's one-hot (finds c0 first).
    """
    names = ["a0", "b0", "b1", "c0"]
    paths = {n: str(root / f"{n}.png") for n in names}
    eye = np.eye(4).tolist()
    records = [PersonImage(image=paths[n], person_id=pid, camera_id=cam, split="test",
                           captions=(f"looks like {n}", "looks like c0 too") if n != "c0" else ("looks like c0", "c0 again"))
               for n, pid, cam in (("a0", 1, 0), ("b0", 2, 0), ("b1", 2, 1), ("c0", 3, 0))]
    texts = {f"looks like {n}": eye[i] for i, n in enumerate(names)} | {"looks like c0 too": eye[3],
                                                                        "c0 again": eye[3]}
    triplets = [
        Triplet(paths["a0"], "q1", str(root / "sub" / ".." / "b1.png"), reference_id=1, target_id=2),
        # ^ the target path written differently: matched after resolving
        Triplet(paths["c0"], "q2", paths["b0"], reference_id=3, target_id=2),
        Triplet(paths["b0"], "q3", str(root / "elsewhere.png"), reference_id=2, target_id=3),
        Triplet(paths["a0"], "q4", str(root / "nobody.png"), reference_id=1, target_id=9),
    ]
    composed = {"q1": [.9, .8, .5, .6], "q2": [.7, .6, .2, .95], "q3": [.1, .99, .3, .5], "q4": [1, 0, 0, 0]}
    return records, triplets, TableEmbedder({paths[n]: eye[i] for i, n in enumerate(names)}, texts, composed)

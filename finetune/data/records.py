"""The record types every loader returns and every caller reads: one person image, one composed triplet,
one VQA pair. Frozen, so a record read from disk is never edited in place (`dataclasses.replace` for a copy)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PersonImage:
    """One image of one person.

    image: absolute path; person_id: 0-based identity; camera_id: -1 when unknown; split: the dataset's split
    name; captions: the image's descriptions; attributes: {attribute: value} (synthetic world) or None;
    noisy_caption: a caption with wrong words (world only) and noisy_words: the indices of those wrong words
    in `finetune.data.text.words(noisy_caption)`.
    """

    image: str
    person_id: int
    camera_id: int = -1
    split: str = ""
    captions: tuple[str, ...] = ()
    attributes: dict[str, Any] | None = field(default=None, hash=False)
    noisy_caption: str | None = None
    noisy_words: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (captions and noisy_words as lists)."""
        out = asdict(self)
        out["captions"], out["noisy_words"] = list(self.captions), list(self.noisy_words)
        return out


@dataclass(frozen=True)
class Triplet:
    """A composed-retrieval query: `reference` image changed by `modification` shows `target` (absolute paths).
    reference_id / target_id: person ids (world) or the number of each distinct image (CIRR, FashionIQ)."""

    reference: str
    modification: str
    target: str
    reference_id: int
    target_id: int
    split: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VqaPair:
    """A question about one world image and its answer from the image's attributes."""

    image: str
    question: str
    answer: str
    attribute: str
    split: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

"""NAM's wrong-word detection as an evaluation task (`lineup eval --task noise`).

It lives in finetune, not in `retrieval.evaluate`, because it runs NAM (`finetune.nam`): retrieval may use
only the data layer of finetune.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from finetune import nam
from finetune.data import PersonImage
from mllm_embed.errors import LineupError


def evaluate_noise(embedder, records: Sequence[PersonImage], layer: int = -1, source: str | Path = "dataset") -> dict:
    """AUC (%) of NAM's calibrated noise ranking injected wrong words above correct ones, on two freshly
    corrupted captions per record, for the joint pass and the two-tower pass. Records need attributes (a
    synthetic world): real datasets have no known wrong words."""
    people = [r for r in records if r.attributes]
    if not people:
        raise LineupError(f"{source}: the noise task needs records with attributes (a synthetic world from "
                          "`lineup world`); real datasets have no known wrong words")
    return {f"AUC_{name}": 100 * nam.detection_auc(embedder, people, layer, joint)
            for name, joint in (("joint", True), ("two_tower", False))}

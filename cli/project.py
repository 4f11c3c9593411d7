"""A Lineup project folder: where the world, the base model, the training runs (each with its adapter) and the
Qdrant store live by default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Project:
    root: Path = field(default_factory=lambda: Path(os.environ.get("LINEUP_PROJECT", "lineup-project")))

    @property
    def world(self) -> Path:
        return self.root / "world"

    @property
    def model(self) -> Path:
        return self.root / "model"

    def run(self, stage: str) -> Path:
        """A training run's folder (checkpoints, metrics.jsonl); its adapter is `run / "adapter"`."""
        return self.root / "runs" / stage

    def adapter(self, stage: str) -> Path:
        return self.run(stage) / "adapter"

    @property
    def qdrant(self) -> Path:
        return self.root / "qdrant"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def default_adapter(self) -> Path | None:
        """The most trained adapter present (stage2, else stage1), or None for the bare base."""
        for stage in ("stage2", "stage1"):
            if (self.adapter(stage) / "lineup_embedder.json").exists():
                return self.adapter(stage)
        return None

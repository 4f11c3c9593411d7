"""LamRA-style merged initialisation: an adapter folded into the base weights, reproduced at load time.

`merge_loaded_adapter(embedder)` merges the embedder's loaded LoRA into its base (peft `merge_and_unload`) and
remembers the folder. When the next adapter is saved, `store_merged` copies every merged adapter into its
`merged/<i>/` subfolders and records them (with the SHA-256 of their weights) in `lineup_embedder.json`
(`merged_adapters`); `apply_merged` merges them again, in order, when that adapter is loaded. The saved artifact
is self-contained (base + small adapter folders), so no merged multi-gigabyte base is written.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from mllm_embed.errors import LineupError

MERGED_DIR = "merged"
WEIGHTS = "adapter_model.safetensors"
_FILES = ("adapter_config.json", WEIGHTS, "lineup_embedder.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def merge_loaded_adapter(embedder) -> None:
    """Fold the embedder's loaded peft adapter into the base weights; the adapter folder joins
    `embedder.merged_sources` (after the adapters merged before it)."""
    if not embedder.adapter or not hasattr(embedder.model, "merge_and_unload"):
        raise LineupError("merge needs an embedder loaded with an adapter (load_embedder(base, adapter=...))")
    embedder.model = embedder.model.merge_and_unload()
    embedder.merged_sources = [*embedder.merged_sources, Path(embedder.adapter)]


def store_merged(sources: list[Path], directory: Path) -> list[dict]:
    """Copy each merged adapter into `directory/merged/<i>/`; the `merged_adapters` records to save."""
    records = []
    for i, source in enumerate(sources):
        target = directory / MERGED_DIR / str(i)
        if Path(source).resolve() != target.resolve():
            target.mkdir(parents=True, exist_ok=True)
            for name in _FILES:
                if (Path(source) / name).exists():
                    shutil.copy2(Path(source) / name, target / name)
        records.append({"path": f"{MERGED_DIR}/{i}", "sha256": _sha256(target / WEIGHTS)})
    return records


def apply_merged(model, adapter_dir: Path, records: list[dict]):
    """Merge the adapters an adapter folder records (`merged_adapters`) into `model`, in order.
    Returns (model, their folders)."""
    from peft import PeftModel

    folders = []
    for record in records:
        folder = Path(adapter_dir) / record["path"]
        weights = folder / WEIGHTS
        if not weights.exists():
            raise LineupError(f"{adapter_dir}: merged adapter {record['path']} is missing; copy the whole adapter "
                              "folder (it holds the stage-1 adapter it was trained on)")
        if _sha256(weights) != record["sha256"]:
            raise LineupError(f"{weights}: does not match the hash recorded when the adapter was trained; the "
                              "merged adapter was changed — restore it or retrain")
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        folders.append(folder)
    return model, folders

"""CIRR and FashionIQ with their official protocols, on small fixtures written in the distributed layouts.

The embedder here is a lookup table: gallery image j embeds to the unit vector e_j and a composed query to a
chosen row of scores, so every expected Recall below is computed by hand from those rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mllm_embed.errors import LineupError
from retrieval.metrics import composed_recall, recall_subset_at_k


class TableEmbedder:
    """encode_images: e_j for the j-th known image file name; encode_composed: the row given per caption."""

    def __init__(self, names: list[str], rows: dict[str, dict[str, float]]):
        self.names, self.rows, self.dim = names, rows, len(names)

    def encode_images(self, images, batch_size=16, progress=None):
        return np.stack([np.eye(self.dim, dtype=np.float32)[self.names.index(Path(p).stem)] for p in images])

    def encode_composed(self, pairs, batch_size=16, progress=None):
        return np.array([[self.rows[text].get(n, 0.0) for n in self.names] for _, text in pairs], dtype=np.float32)


def _png(path: Path, shade: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 255 - shade, 0)).save(path)


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


# hand-made scores: query → {gallery name: score}; unlisted names score 0
CIRR_ROWS = {
    # reference dev-0 scores highest but is excluded; target dev-2 second after dev-1 → rank 2 of the gallery,
    # rank 2 of its subset {1, 2, 3, 4, 5}
    "make it blue": {"dev-0": 0.9, "dev-1": 0.8, "dev-2": 0.7, "dev-3": 0.1, "dev-4": 0.2, "dev-5": 0.3},
    # target dev-5 after dev-0, dev-2, dev-4 → rank 4 of the gallery; subset {3, 5}: rank 1
    "add a dog": {"dev-0": 0.95, "dev-1": 0.99, "dev-2": 0.9, "dev-3": 0.5, "dev-4": 0.85, "dev-5": 0.8},
    # target dev-4 first everywhere
    "remove the car": {"dev-4": 1.0, "dev-3": 0.9},
}
CIRR_EXPECTED = {"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0, "Rsubset@1": 200 / 3,
                 "Rsubset@2": 100.0, "Rsubset@3": 100.0, "R_avg": (100 + 200 / 3) / 2}


@pytest.fixture
def cirr(tmp_path) -> Path:
    """captions/cap.rc2.{val,test1}.json, image_splits/split.rc2.val.json, images in img_raw/dev/."""
    root = tmp_path / "cirr"
    names = [f"dev-{i}" for i in range(6)]
    _write(root / "image_splits" / "split.rc2.val.json", {n: f"./dev/{n}.png" for n in names})
    for n in names:
        _png(root / "img_raw" / "dev" / f"{n}.png")
    caps = [("dev-0", "dev-2", "make it blue", names), ("dev-1", "dev-5", "add a dog", ["dev-1", "dev-3", "dev-5"]),
            ("dev-3", "dev-4", "remove the car", ["dev-3", "dev-4", "dev-0"])]
    _write(root / "captions" / "cap.rc2.val.json", [
        {"pairid": i, "reference": r, "target_hard": t, "target_soft": {t: 1.0}, "caption": c,
         "img_set": {"id": i, "members": m, "reference_rank": 0, "target_rank": 1}}
        for i, (r, t, c, m) in enumerate(caps)])
    _write(root / "captions" / "cap.rc2.test1.json", [{"pairid": 9, "reference": "dev-0", "caption": "x",
                                                        "img_set": {"id": 9, "members": names}}])
    _write(root / "image_splits" / "split.rc2.test1.json", {n: f"./dev/{n}.png" for n in names})
    train = [f"train-{i}" for i in range(4)]
    _write(root / "image_splits" / "split.rc2.train.json", {n: f"./train/0/{n}.png" for n in train})
    for i, n in enumerate(train):
        _png(root / "img_raw" / "train" / "0" / f"{n}.png", shade=40 * i)
    _write(root / "captions" / "cap.rc2.train.json", [
        {"pairid": 100 + i, "reference": train[i], "target_hard": train[(i + 1) % 4], "caption": f"edit {i}",
         "img_set": {"id": 100 + i, "members": train}} for i in range(4)])
    return root


def test_cirr_protocol_matches_hand_computed_recalls(cirr):
    from retrieval.evaluate import evaluate_dataset

    embedder = TableEmbedder([f"dev-{i}" for i in range(6)], CIRR_ROWS)
    out = evaluate_dataset(embedder, cirr, ("composed",))["composed"]  # split "test" → val (test1 is hidden)
    for key, value in CIRR_EXPECTED.items():
        assert out[key] == pytest.approx(value), key
    assert out["queries"] == 3 and out["gallery"] == 6


def test_cirr_gallery_is_the_split_file_and_test1_is_refused(cirr):
    from finetune.data.loaders import load_cirr_benchmark

    (cirr / "img_raw" / "dev" / "dev-5.png").unlink()
    bench = load_cirr_benchmark(cirr, "val")
    assert [n for n, _ in bench["gallery"]] == [f"dev-{i}" for i in range(5)]
    assert bench["skipped_missing_images"] == 1 and len(bench["queries"]) == 2  # dev-5's target query dropped
    with pytest.raises(LineupError, match="evaluation server"):
        load_cirr_benchmark(cirr, "test1")
    with pytest.raises(LineupError, match=r"splits here: \['test1', 'train', 'val'\]"):
        load_cirr_benchmark(cirr, "dev")


@pytest.fixture
def fashioniq(tmp_path) -> Path:
    """captions/cap.{dress,shirt}.val.json, image_splits/split.{dress,shirt}.val.json, images/<name>.png."""
    root = tmp_path / "fiq"
    dresses = [f"d{i}" for i in range(12)]
    shirts = [f"s{i}" for i in range(3)]
    for n in dresses + shirts:
        _png(root / "images" / f"{n}.png")
    _write(root / "image_splits" / "split.dress.val.json", dresses)
    _write(root / "image_splits" / "split.shirt.val.json", shirts)
    _write(root / "captions" / "cap.dress.val.json", [
        {"candidate": "d0", "target": "d11", "captions": ["is red.", "has sleeves"]},
        {"candidate": "d1", "target": "d2", "captions": ["is longer", "is blue"]}])
    _write(root / "captions" / "cap.shirt.val.json", [{"candidate": "s0", "target": "s1", "captions": ["a", "b"]}])
    return root


def test_fashioniq_protocol_per_category_and_average(fashioniq):
    from retrieval.evaluate import evaluate_dataset

    names = [f"d{i}" for i in range(12)] + [f"s{i}" for i in range(3)]
    rows = {
        # every other dress outscores the target d11 (the reference d0 counts: FashionIQ keeps it) → rank 12
        "is red and has sleeves": {f"d{i}": 1.0 - i / 100 for i in range(12)},
        "is longer and is blue": {"d2": 1.0},  # rank 1
        "a and b": {"s1": 1.0},
    }
    out = evaluate_dataset(TableEmbedder(names, rows), fashioniq, ("composed",))["composed"]
    assert out["dress R@10"] == 50.0 and out["dress R@50"] == 100.0
    assert out["shirt R@10"] == 100.0 and out["shirt R@50"] == 100.0
    assert out["average R@10"] == 75.0 and out["average R@50"] == 100.0
    assert out["dress queries"] == 2 and "toptee R@10" not in out


def test_benchmarks_refuse_person_tasks(cirr):
    from retrieval.evaluate import evaluate_dataset

    with pytest.raises(LineupError, match="--task composed"):
        evaluate_dataset(TableEmbedder([], {}), cirr, ("t2i",))


def test_composed_recall_excludes_the_reference():
    sim = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.4]])
    assert composed_recall(sim, [1, 2], ks=(1,)) == {"R@1": 50.0}  # without exclusion the reference wins
    assert composed_recall(sim, [1, 2], [0, -1], ks=(1, 2)) == {"R@1": 100.0, "R@2": 100.0}
    with pytest.raises(ValueError, match="excluded"):
        composed_recall(sim, [0, 2], [0, -1])


def test_recall_subset_ranks_only_the_members():
    sim = np.array([[0.9, 0.5, 0.5, 0.1]])
    assert recall_subset_at_k(sim, [2], [[1, 2, 3]], ks=(1, 2)) == {"Rsubset@1": 0.0, "Rsubset@2": 100.0}  # tie: order
    assert recall_subset_at_k(sim, [2], [[2, 3]], ks=(1,)) == {"Rsubset@1": 100.0}
    with pytest.raises(ValueError, match="not in its subset"):
        recall_subset_at_k(sim, [0], [[1, 2]])


def test_cli_eval_on_a_cirr_folder(cirr, tiny_base, tmp_path, capsys):
    from cli.main import main

    out = tmp_path / "cirr.json"
    assert main(["eval", "--model", str(tiny_base), "--adapter", "none", "--dataset", str(cirr), "--task",
                 "composed", "--json", str(out), "--project", str(tmp_path)]) == 0
    result = json.loads(out.read_text())["composed"]
    assert set(CIRR_EXPECTED) <= set(result) and result["queries"] == 3 and result["gallery"] == 6
    assert "image + modification" in capsys.readouterr().out


def test_cli_train_stage2_on_a_cirr_folder(cirr, tiny_base, tmp_path):
    """Stage 2 on CIRR's train split (triplets only: no stage-1 replay, no per-epoch person evaluation); the adapter
    then evaluates with the protocol."""
    from cli.main import main
    from finetune.loop import METRICS_FILE
    from mllm_embed import load_embedder
    from retrieval.evaluate import evaluate_cirr

    run = tmp_path / "run"
    assert main(["train", "stage2", "--model", str(tiny_base), "--dataset", str(cirr),
                 "--out", str(run), "--epochs", "2", "--batch-size", "2", "--project", str(tmp_path)]) == 0
    rows = [json.loads(x) for x in (run / METRICS_FILE).read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["stage2"] * 4  # 4 triplets / 2 per batch × 2 epochs
    embedder = load_embedder(tiny_base, adapter=run / "adapter")
    assert evaluate_cirr(embedder, cirr)["queries"] == 3

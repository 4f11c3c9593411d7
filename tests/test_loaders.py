"""Loaders: the world and tiny fixtures in each real format round-trip onto the contract columns."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from datasets import load_dataset
from PIL import Image

from finetune.data.loaders import load_person_dataset, load_report, load_triplets, load_vqa
from mllm_embed.errors import LineupError

PERSON_COLUMNS = {"image", "person_id", "camera_id", "split", "captions", "attributes"}
TRIPLET_COLUMNS = {"reference", "modification", "target", "reference_id", "target_id", "split"}


def _png(path: Path, shade: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (shade, 40, 80)).save(path)


def _write(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_world_annotations_round_trip(tiny_world):
    ds = load_person_dataset(tiny_world)
    raw = [json.loads(line) for line in (tiny_world / "annotations.jsonl").read_text().splitlines()]
    assert set(ds.column_names) == PERSON_COLUMNS and len(ds) == len(raw)
    for row, r in zip(ds.select(range(10)), raw):
        assert row["image"] == str((tiny_world / r["image"]).resolve()) and Path(row["image"]).is_file()
        assert (row["person_id"], row["camera_id"], row["split"]) == (r["person_id"], r["camera_id"], r["split"])
        assert row["captions"] == r["captions"] and json.loads(row["attributes"]) == r["attributes"]
    assert load_report(ds)["skipped_missing_images"] == 0
    # the raw files are plain JSONL that `datasets` reads directly
    direct = load_dataset("json", data_files=str(tiny_world / "annotations.jsonl"), split="train")
    assert len(direct) == len(raw) and direct[0]["noisy_words"] == raw[0]["noisy_words"]


def test_world_triplets_and_vqa(tiny_world):
    trips = load_triplets(tiny_world)
    assert set(trips.column_names) == TRIPLET_COLUMNS
    raw = [json.loads(line) for line in (tiny_world / "triplets.jsonl").read_text().splitlines()]
    assert len(trips) == len(raw)
    assert trips[0]["modification"] == raw[0]["modification"] and trips[0]["target_id"] == raw[0]["target_id"]
    assert Path(trips[0]["reference"]).is_file() and Path(trips[0]["target"]).is_file()
    vqa = load_vqa(tiny_world)
    assert set(vqa.column_names) == {"image", "question", "answer", "attribute", "split"}
    assert len(vqa) == len((tiny_world / "vqa.jsonl").read_text().splitlines())
    assert set(vqa["answer"]) >= {"yes", "no", "male", "female"}


def _cuhk(root: Path, ids=(1, 2)) -> list[dict]:
    items = []
    for n, pid in enumerate(ids):
        rel = f"CUHK01/{pid:04d}{n:03d}.png"
        _png(root / "imgs" / rel, n)
        items.append({"split": "train" if n == 0 else "test", "captions": [f"a person number {n}", "walking"],
                      "file_path": rel, "processed_tokens": [["a", "person"]], "id": pid})
    return items


def test_cuhk_pedes_round_trip_with_1_based_ids(tmp_path):
    items = _cuhk(tmp_path)
    _write(tmp_path / "reid_raw.json", items)
    ds = load_person_dataset(tmp_path)
    assert set(ds.column_names) == PERSON_COLUMNS
    assert ds["person_id"] == [0, 1] and ds["split"] == ["train", "test"] and ds["camera_id"] == [-1, -1]
    assert ds["captions"][0] == ["a person number 0", "walking"] and ds["attributes"] == ["", ""]
    assert ds["image"][1] == str((tmp_path / "imgs" / items[1]["file_path"]).resolve())
    assert load_person_dataset(tmp_path / "reid_raw.json", fmt="cuhk-pedes")["person_id"] == [0, 1]


def test_icfg_rstpreid_ufine_round_trip(tmp_path):
    icfg = tmp_path / "icfg"
    _png(icfg / "imgs" / "test/0000/0000_001.jpg")
    _write(icfg / "ICFG-PEDES.json", [{"split": "test", "captions": ["tall man"], "file_path": "test/0000/0000_001.jpg",
                                       "processed_tokens": [], "id": 0}])
    ds = load_person_dataset(icfg)
    assert ds["person_id"] == [0] and ds["split"] == ["test"] and ds["captions"] == [["tall man"]]

    rstp = tmp_path / "rstp"
    _png(rstp / "imgs" / "0007_c14_0031.jpg")
    _write(rstp / "data_captions.json", [{"id": 7, "img_path": "0007_c14_0031.jpg", "split": "val",
                                          "captions": ["first caption", "second caption"]}])
    ds = load_person_dataset(rstp)
    assert (ds["person_id"], ds["camera_id"], ds["split"]) == ([7], [14], ["val"])
    assert ds["captions"] == [["first caption", "second caption"]]

    ufine = tmp_path / "ufine"
    _png(ufine / "imgs" / "train/3/a.png")
    _write(ufine / "ufine6926_annotations.json", [{"split": "train", "id": 3, "file_path": "train/3/a.png",
                                                   "captions": ["a very detailed caption"]}])
    ds = load_person_dataset(ufine)
    assert ds["person_id"] == [3] and Path(ds["image"][0]).is_file()


def test_missing_images_are_skipped_and_counted(tmp_path, caplog):
    items = _cuhk(tmp_path, ids=(1, 2, 3))
    (tmp_path / "imgs" / items[1]["file_path"]).unlink()
    _write(tmp_path / "reid_raw.json", items)
    with caplog.at_level(logging.WARNING):
        ds = load_person_dataset(tmp_path)
    assert ds["person_id"] == [0, 2]
    assert load_report(ds) == {"source": str(tmp_path / "reid_raw.json"), "format": "cuhk-pedes", "records": 2,
                               "skipped_missing_images": 1}
    assert "skipped 1 of 3" in caplog.text
    for it in items:
        (tmp_path / "imgs" / it["file_path"]).unlink(missing_ok=True)
    with pytest.raises(LineupError, match="none of the 3 images"):
        load_person_dataset(tmp_path)


def test_malformed_files_name_file_and_field(tmp_path):
    items = _cuhk(tmp_path)
    del items[1]["captions"]
    _write(tmp_path / "reid_raw.json", items)
    with pytest.raises(LineupError, match=r"reid_raw.json: item 1 has no 'captions' field — is this a CUHK-PEDES"):
        load_person_dataset(tmp_path)
    _write(tmp_path / "reid_raw.json", {"not": "a list"})
    with pytest.raises(LineupError, match="reid_raw.json: expected a JSON list"):
        load_person_dataset(tmp_path)
    (tmp_path / "reid_raw.json").write_text("[{oops")
    with pytest.raises(LineupError, match="reid_raw.json: not valid JSON"):
        load_person_dataset(tmp_path)
    items = _cuhk(tmp_path)
    items[0]["id"] = "seven"
    _write(tmp_path / "reid_raw.json", items)
    with pytest.raises(LineupError, match="item 0 field 'id' must be an integer"):
        load_person_dataset(tmp_path)
    with pytest.raises(LineupError, match="valid: auto, world"):
        load_person_dataset(tmp_path, fmt="market1501")
    with pytest.raises(LineupError, match="no annotations.jsonl"):
        load_person_dataset(tmp_path / "imgs")


def test_cirr_round_trip(tmp_path):
    names = {"dev-1-0-img0": "./dev/dev-1-0-img0.png", "dev-1-1-img1": "./dev/dev-1-1-img1.png",
             "dev-2-0-img0": "./dev/dev-2-0-img0.png"}
    for i, rel in enumerate(names.values()):
        _png(tmp_path / rel, i * 50)
    _write(tmp_path / "image_splits" / "split.rc2.val.json", names)
    _write(tmp_path / "captions" / "cap.rc2.val.json", [
        {"pairid": 0, "reference": "dev-1-0-img0", "target_hard": "dev-1-1-img1", "caption": "make it red",
         "img_set": {}, "target_soft": {}},
        {"pairid": 1, "reference": "dev-2-0-img0", "target_hard": "dev-1-0-img0", "caption": "two dogs instead",
         "img_set": {}, "target_soft": {}},
    ])
    _write(tmp_path / "image_splits" / "split.rc2.test1.json", {})
    _write(tmp_path / "captions" / "cap.rc2.test1.json", [{"pairid": 9, "reference": "x", "caption": "hidden"}])
    ds = load_triplets(tmp_path)
    assert set(ds.column_names) == TRIPLET_COLUMNS and len(ds) == 2  # test1 has no targets
    assert ds["modification"] == ["make it red", "two dogs instead"] and ds["split"] == ["val", "val"]
    assert ds["reference"][0] == str((tmp_path / "dev/dev-1-0-img0.png").resolve())
    # ids number distinct images: dev-1-0-img0 is the first reference and the second target
    assert ds["reference_id"][0] == ds["target_id"][1] and ds["reference_id"][0] != ds["target_id"][0]
    bad = [{"pairid": 0, "reference": "dev-1-0-img0", "target_hard": "nope", "caption": "c"}]
    _write(tmp_path / "captions" / "cap.rc2.val.json", bad)
    with pytest.raises(LineupError, match="'nope', which split.rc2.val.json does not list"):
        load_triplets(tmp_path, fmt="cirr")


def test_fashioniq_round_trip(tmp_path):
    for name in ("B001", "B002", "B003"):
        _png(tmp_path / "images" / f"{name}.png")
    _write(tmp_path / "captions" / "cap.dress.train.json", [
        {"candidate": "B001", "target": "B002", "captions": ["is blue", "has short sleeves."]},
        {"candidate": "B003", "target": "B999", "captions": ["is longer", "is red"]},  # target image missing
    ])
    ds = load_triplets(tmp_path)
    assert len(ds) == 1 and ds["modification"] == ["is blue and has short sleeves"]
    assert ds["target"][0] == str((tmp_path / "images" / "B002.png").resolve()) and ds["split"] == ["train"]
    assert load_report(ds)["skipped_missing_images"] == 1
    _write(tmp_path / "captions" / "cap.dress.train.json", [{"candidate": "B001", "target": "B002"}])
    with pytest.raises(LineupError, match="cap.dress.train.json: item 0 has no 'captions' field — is this a FashionIQ"):
        load_triplets(tmp_path)


def test_fashioniq_benchmark_gallery_is_the_category_split(tmp_path):
    from finetune.data.loaders import composed_benchmark_format, load_fashioniq_benchmark

    assert composed_benchmark_format(tmp_path) is None
    for name in ("B001", "B002"):
        _png(tmp_path / "images" / f"{name}.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "B003.jpg")  # .jpg distributions are found too
    _write(tmp_path / "image_splits" / "split.dress.val.json", ["B001", "B002", "B003", "B404"])
    _write(tmp_path / "captions" / "cap.dress.val.json", [
        {"candidate": "B001", "target": "B003", "captions": ["is blue.", "is short"]},
        {"candidate": "B001", "target": "B404", "captions": ["a", "b"]}])  # target file missing: skipped
    assert composed_benchmark_format(tmp_path) == "fashioniq"
    bench = load_fashioniq_benchmark(tmp_path, "dress")
    assert [n for n, _ in bench["gallery"]] == ["B001", "B002", "B003"] and bench["skipped_missing_images"] == 1
    assert bench["queries"] == [{"reference": "B001", "caption": "is blue and is short", "target": "B003"}]
    with pytest.raises(LineupError, match="choose one of"):
        load_fashioniq_benchmark(tmp_path, "shoes")
    _write(tmp_path / "captions" / "cap.dress.test.json", [{"candidate": "B001", "captions": ["a", "b"]}])
    _write(tmp_path / "image_splits" / "split.dress.test.json", ["B001"])
    with pytest.raises(LineupError, match="hides its targets"):
        load_fashioniq_benchmark(tmp_path, "dress", "test")

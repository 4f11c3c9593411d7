"""Loaders: the world and tiny fixtures in each real format round-trip onto the record types."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from datasets import load_dataset
from PIL import Image

from finetune.data import PersonImage, Triplet, load_split, load_triplets, load_vqa, read_jsonl, write_jsonl
from mllm_embed.errors import LineupError


def _png(path: Path, shade: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (shade, 40, 80)).save(path)


def _write(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_world_annotations_round_trip(tiny_world, caplog):
    with caplog.at_level(logging.WARNING):
        records = load_split(tiny_world, "all")
    raw = read_jsonl(tiny_world / "annotations.jsonl")
    assert all(isinstance(r, PersonImage) for r in records) and len(records) == len(raw)
    assert "skipped" not in caplog.text
    for rec, r in zip(records, raw):
        assert rec.image == str((tiny_world / r["image"]).resolve()) and Path(rec.image).is_file()
        assert (rec.person_id, rec.camera_id, rec.split) == (r["person_id"], r["camera_id"], r["split"])
        assert list(rec.captions) == r["captions"] and rec.attributes == r["attributes"]
        # the world's noisy caption travels with its image; wrong-word indices count `words` of it
        assert (rec.noisy_caption, list(rec.noisy_words)) == ((r["noisy_caption"], r["noisy_words"])
                                                               if r["noisy_caption"] else (None, []))
    assert any(r.noisy_words for r in records)
    # as_dict: the annotation row's fields (absolute image path), JSON-ready
    assert json.loads(json.dumps(rec.as_dict())) == {k: r[k] for k in rec.as_dict() if k != "image"} | {
        "image": rec.image}
    # one split keeps the file's order; an empty one is a clear error only when required
    assert [r.image for r in load_split(tiny_world, "val")] == [r.image for r in records if r.split == "val"]
    assert load_split(tiny_world, "nope") == []
    with pytest.raises(LineupError, match="split 'nope' is empty — pick another split \\(here: test, train, val\\)"):
        load_split(tiny_world, "nope", required=True)
    # the raw files are plain JSONL that `datasets` reads directly
    direct = load_dataset("json", data_files=str(tiny_world / "annotations.jsonl"), split="train")
    assert len(direct) == len(raw) and direct[0]["noisy_words"] == raw[0]["noisy_words"]


def test_world_triplets_and_vqa(tiny_world):
    trips = load_triplets(tiny_world)
    raw = read_jsonl(tiny_world / "triplets.jsonl")
    assert all(isinstance(t, Triplet) for t in trips) and len(trips) == len(raw)
    assert trips[0].modification == raw[0]["modification"] and trips[0].target_id == raw[0]["target_id"]
    assert Path(trips[0].reference).is_file() and Path(trips[0].target).is_file()
    assert load_triplets(tiny_world, "test") == [t for t in trips if t.split == "test"] != []
    vqa = load_vqa(tiny_world)
    assert len(vqa) == len((tiny_world / "vqa.jsonl").read_text().splitlines())
    assert {q.answer for q in vqa} >= {"yes", "no", "male", "female"}
    assert load_vqa(tiny_world, "val") == [q for q in vqa if q.split == "val"] != []


def test_jsonl_reader_and_writer(tmp_path):
    rows = [{"a": 1, "text": "a man, in red."}, {"b": [1, 2]}]
    path = write_jsonl(tmp_path / "sub" / "rows.jsonl", rows)
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in rows)
    assert read_jsonl(path) == rows
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n\n{oops\n')
    with pytest.raises(LineupError, match="bad.jsonl: line 3 is not valid JSON"):
        read_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(LineupError, match="gone.jsonl: not found — make it first"):
        read_jsonl(tmp_path / "gone.jsonl", missing="make it first")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(LineupError, match="--out .*dir.jsonl: cannot write"):
        write_jsonl(tmp_path / "dir.jsonl", rows, "--out")


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
    ds = load_split(tmp_path, None)
    assert [(r.person_id, r.split, r.camera_id) for r in ds] == [(0, "train", -1), (1, "test", -1)]
    assert ds[0].captions == ("a person number 0", "walking") and [r.attributes for r in ds] == [None, None]
    assert (ds[0].noisy_caption, ds[0].noisy_words) == (None, ())
    assert ds[1].image == str((tmp_path / "imgs" / items[1]["file_path"]).resolve())
    assert load_split(tmp_path / "reid_raw.json", "all", fmt="cuhk-pedes") == ds
    assert load_split(tmp_path, "test") == [ds[1]]


def test_icfg_rstpreid_ufine_round_trip(tmp_path):
    icfg = tmp_path / "icfg"
    _png(icfg / "imgs" / "test/0000/0000_001.jpg")
    _write(icfg / "ICFG-PEDES.json", [{"split": "test", "captions": ["tall man"], "file_path": "test/0000/0000_001.jpg",
                                       "processed_tokens": [], "id": 0}])
    (rec,) = load_split(icfg, None)
    assert (rec.person_id, rec.split, rec.captions) == (0, "test", ("tall man",))

    rstp = tmp_path / "rstp"
    _png(rstp / "imgs" / "0007_c14_0031.jpg")
    _write(rstp / "data_captions.json", [{"id": 7, "img_path": "0007_c14_0031.jpg", "split": "val",
                                          "captions": ["first caption", "second caption"]}])
    (rec,) = load_split(rstp, None)
    assert (rec.person_id, rec.camera_id, rec.split) == (7, 14, "val")
    assert rec.captions == ("first caption", "second caption")

    ufine = tmp_path / "ufine"
    _png(ufine / "imgs" / "train/3/a.png")
    _write(ufine / "ufine6926_annotations.json", [{"split": "train", "id": 3, "file_path": "train/3/a.png",
                                                   "captions": ["a very detailed caption"]}])
    (rec,) = load_split(ufine, None)
    assert rec.person_id == 3 and Path(rec.image).is_file()


def test_missing_images_are_skipped_and_counted(tmp_path, caplog):
    items = _cuhk(tmp_path, ids=(1, 2, 3))
    (tmp_path / "imgs" / items[1]["file_path"]).unlink()
    _write(tmp_path / "reid_raw.json", items)
    with caplog.at_level(logging.WARNING):
        ds = load_split(tmp_path, None)
    assert [r.person_id for r in ds] == [0, 2]
    assert f"{tmp_path / 'reid_raw.json'}: skipped 1 of 3 records whose image file is missing" in caplog.text
    for it in items:
        (tmp_path / "imgs" / it["file_path"]).unlink(missing_ok=True)
    with pytest.raises(LineupError, match="none of the 3 images"):
        load_split(tmp_path, None)


def test_malformed_files_name_file_and_field(tmp_path):
    items = _cuhk(tmp_path)
    del items[1]["captions"]
    _write(tmp_path / "reid_raw.json", items)
    with pytest.raises(LineupError, match=r"reid_raw.json: item 1 has no 'captions' field — is this a CUHK-PEDES"):
        load_split(tmp_path, None)
    _write(tmp_path / "reid_raw.json", {"not": "a list"})
    with pytest.raises(LineupError, match="reid_raw.json: expected a JSON list"):
        load_split(tmp_path, None)
    (tmp_path / "reid_raw.json").write_text("[{oops")
    with pytest.raises(LineupError, match="reid_raw.json: not valid JSON"):
        load_split(tmp_path, None)
    items = _cuhk(tmp_path)
    items[0]["id"] = "seven"
    _write(tmp_path / "reid_raw.json", items)
    with pytest.raises(LineupError, match="item 0 field 'id' must be an integer"):
        load_split(tmp_path, None)
    with pytest.raises(LineupError, match="valid: auto, world"):
        load_split(tmp_path, None, fmt="market1501")
    with pytest.raises(LineupError, match="no annotations.jsonl"):
        load_split(tmp_path / "imgs", None)


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
    assert len(ds) == 2  # test1 has no targets
    assert [t.modification for t in ds] == ["make it red", "two dogs instead"] and {t.split for t in ds} == {"val"}
    assert ds[0].reference == str((tmp_path / "dev/dev-1-0-img0.png").resolve())
    # ids number distinct images: dev-1-0-img0 is the first reference and the second target
    assert ds[0].reference_id == ds[1].target_id and ds[0].reference_id != ds[0].target_id
    bad = [{"pairid": 0, "reference": "dev-1-0-img0", "target_hard": "nope", "caption": "c"}]
    _write(tmp_path / "captions" / "cap.rc2.val.json", bad)
    with pytest.raises(LineupError, match="'nope', which split.rc2.val.json does not list"):
        load_triplets(tmp_path, fmt="cirr")


def test_fashioniq_round_trip(tmp_path, caplog):
    for name in ("B001", "B002", "B003"):
        _png(tmp_path / "images" / f"{name}.png")
    _write(tmp_path / "captions" / "cap.dress.train.json", [
        {"candidate": "B001", "target": "B002", "captions": ["is blue", "has short sleeves."]},
        {"candidate": "B003", "target": "B999", "captions": ["is longer", "is red"]},  # target image missing
    ])
    with caplog.at_level(logging.WARNING):
        (t,) = load_triplets(tmp_path)
    assert t.modification == "is blue and has short sleeves"
    assert t.target == str((tmp_path / "images" / "B002.png").resolve()) and t.split == "train"
    assert "skipped 1 of 2 records" in caplog.text
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


def test_the_data_layer_imports_nothing_above_it():
    """finetune.data is the lowest layer: no training, retrieval or CLI module, and no torch beyond what
    `mllm_embed.errors` (its one import from outside) brings."""
    import subprocess
    import sys

    def loaded(*modules: str) -> set[str]:
        code = f"import sys; import {', '.join(modules)}; print(' '.join(sys.modules))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1])
        return set(out.stdout.split())

    data = loaded("finetune.data", "finetune.data.world")
    assert not {m for m in data if m.split(".")[0] in ("retrieval", "cli", "datasets")}
    assert not {m for m in data if m.startswith("finetune.") and not m.startswith("finetune.data")}
    assert "torch" not in data or "torch" in loaded("mllm_embed.errors")

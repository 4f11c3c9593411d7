"""The synthetic world: determinism, identity-disjoint splits, exact triplets, captions, noisy words, VQA."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune.data import read_jsonl, words
from finetune.data.render import COLORS
from finetune.data.world import (
    ATTRIBUTES,
    CAPTION_TEMPLATES,
    QUESTION_BANK,
    VALUE_PHRASES,
    WorldConfig,
    answer_from_attributes,
    apply_edit,
    describe,
    generate_world,
)


def _rows(path: Path, name: str) -> list[dict]:
    return read_jsonl(path / name)


def _words(attr: str, value: str) -> set[str]:
    return {w for phrase in VALUE_PHRASES[attr].get(value, []) for w in phrase.split()}


@pytest.fixture(scope="module")
def world(tiny_world):
    return {name: _rows(tiny_world, f"{name}.jsonl") for name in ("annotations", "triplets", "vqa")}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_identical_bytes_different_seed_differs(tmp_path):
    cfg = dict(identities=6, images_per_id=2)
    a = _files(generate_world(tmp_path / "a", WorldConfig(seed=3, **cfg)))
    b = _files(generate_world(tmp_path / "b", WorldConfig(seed=3, **cfg)))
    c = _files(generate_world(tmp_path / "c", WorldConfig(seed=4, **cfg)))
    assert len(a) == 6 * 2 + 4 and a == b
    pngs = [k for k in a if k.endswith(".png")]
    assert len(pngs) == 12
    # a different seed draws different people and shots: most crops change
    assert sum(a[k] != c.get(k) for k in pngs) >= 10
    assert a["annotations.jsonl"] != c["annotations.jsonl"]


def test_images_are_person_crops_with_declared_names(tiny_world, world):
    rows = world["annotations"]
    assert len(rows) == 48 * 4
    for r in rows[:20]:
        img = Image.open(tiny_world / r["image"])
        assert img.size == (128, 256) and img.mode == "RGB"
        pid, cam, k = Path(r["image"]).stem.split("_")
        assert int(pid) == r["person_id"] and int(cam[1:]) == r["camera_id"]
    meta = json.loads((tiny_world / "world.json").read_text())
    assert meta["counts"]["images"] == len(rows) and meta["attributes"] == ATTRIBUTES


def test_garment_colours_cover_large_areas(tiny_world, world):
    """The named upper/lower colours must really be painted (a tiny vision model has to learn them)."""
    shares = {"upper_color": [], "lower_color": []}
    for r in world["annotations"][::2]:
        px = np.asarray(Image.open(tiny_world / r["image"]), dtype=np.float32)
        for key in shares:
            ref = np.array(COLORS[r["attributes"][key]], dtype=np.float32)
            shares[key].append(float((np.linalg.norm(px - ref, axis=2) < 60).mean()))
    for key, v in shares.items():
        assert np.median(v) > 0.05, key
        assert np.mean(np.array(v) > 0.01) > 0.9, key


def test_splits_are_identity_disjoint_and_near_70_10_20(world):
    by_split: dict[str, set[int]] = {}
    for r in world["annotations"]:
        by_split.setdefault(r["split"], set()).add(r["person_id"])
    assert set(by_split) == {"train", "val", "test"}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])
    assert not (by_split["val"] & by_split["test"])
    assert 28 <= len(by_split["train"]) <= 38 and 2 <= len(by_split["val"]) <= 8 and 6 <= len(by_split["test"]) <= 14
    cams: dict[int, set[int]] = {}
    for r in world["annotations"]:
        cams.setdefault(r["person_id"], set()).add(r["camera_id"])
    assert all(len(c) >= 2 for c in cams.values())  # cross-camera matches exist for every identity


def test_triplets_are_exact_one_edit_neighbours(world):
    rows = world["annotations"]
    attrs = {r["person_id"]: r["attributes"] for r in rows}
    split = {r["image"]: r["split"] for r in rows}
    owner = {r["image"]: r["person_id"] for r in rows}
    trips = world["triplets"]
    assert len(trips) >= 40
    edited = set()
    for t in trips:
        ref, tgt = attrs[t["reference_id"]], attrs[t["target_id"]]
        assert tgt == apply_edit(ref, t["edit"])
        changed = {k for k in ATTRIBUTES if ref[k] != tgt[k]} - {"bag_color"} if t["edit"]["attribute"] == "bag" \
            else {k for k in ATTRIBUTES if ref[k] != tgt[k]}
        assert changed == {t["edit"]["attribute"]}
        assert t["edit"]["from"] == ref[t["edit"]["attribute"]] and t["edit"]["to"] == tgt[t["edit"]["attribute"]]
        assert owner[t["reference"]] == t["reference_id"] and owner[t["target"]] == t["target_id"]
        assert split[t["reference"]] == split[t["target"]] == t["split"]
        assert t["modification"].strip()
        edited.add(t["edit"]["attribute"])
    assert len(edited) >= 5  # many kinds of edits, not one
    assert {t["split"] for t in trips} >= {"train", "test"}  # composed evaluation has test triplets


def test_modification_text_names_the_new_value(world):
    for t in world["triplets"]:
        e = t["edit"]
        if e["to"] == "none":
            assert e["from"] in t["modification"]
        else:
            assert e["to"] in t["modification"], t


def test_at_least_20_templates_and_two_captions_per_image(world):
    assert len(CAPTION_TEMPLATES) >= 20
    structures = set()
    for r in world["annotations"]:
        assert len(r["captions"]) >= 2 and len(set(r["captions"])) == len(r["captions"])
        structures.update(" ".join(c.split()[:2]) for c in r["captions"])
    assert len(structures) >= 20


def test_captions_state_only_true_colours(world):
    color_attrs = ["hair_color", "upper_color", "lower_color", "shoes_color", "bag_color"]
    vocab = {w for a in color_attrs for v in ATTRIBUTES[a] for w in _words(a, v)} - {"dark", "fair"}
    for r in world["annotations"]:
        a = r["attributes"]
        true = {w for k in color_attrs for w in _words(k, a[k])}
        for c in r["captions"]:
            said = set(words(c)) & vocab
            assert said <= true, (c, a)


def test_describe_fills_every_template_for_random_people():
    rng = np.random.default_rng(0)
    from finetune.data.world import sample_attributes

    for i, tpl in enumerate(CAPTION_TEMPLATES):
        text = describe(sample_attributes(rng), rng, i)
        assert "{" not in text and text[0].isupper() and text.endswith(".")
    assert describe(sample_attributes(rng), random.Random(1))  # stdlib rng works too


def test_noisy_words_point_at_really_wrong_words(world):
    noisy = [r for r in world["annotations"] if r["noisy_caption"]]
    assert 0.15 < len(noisy) / len(world["annotations"]) < 0.45  # noise_rate 0.3
    for r in noisy:
        a = r["attributes"]
        said = words(r["noisy_caption"])  # noisy_words index these
        assert r["noisy_words"] and max(r["noisy_words"]) < len(said)
        for i in r["noisy_words"]:
            w = said[i]
            # some attribute's wrong value uses this word while its true value never does
            assert any(w in _words(k, v) and w not in _words(k, a[k])
                       for k in VALUE_PHRASES for v in ATTRIBUTES[k] if v != a[k]), (w, r)
        unflagged = [w for i, w in enumerate(said) if i not in r["noisy_words"]]
        colours = {c for c in COLORS}
        true_colours = {a[k] for k in ("upper_color", "lower_color", "shoes_color", "bag_color")}
        # a colour word that is left unflagged must be one the person really has somewhere
        assert {w for w in unflagged if w in colours} - true_colours - {a["hair_color"], "grey"} == set()


def test_vqa_answers_follow_attributes(world):
    assert 15 <= len(QUESTION_BANK) <= 16
    attrs = {r["image"]: r["attributes"] for r in world["annotations"]}
    views = {r["image"]: r["view"] for r in world["annotations"]}
    keys = set()
    for q in world["vqa"]:
        assert q["answer"] == answer_from_attributes(attrs[q["image"]], q["attribute"])
        if views[q["image"]] == "back":
            assert q["attribute"] not in ("glasses", "has_glasses")
        keys.add(q["attribute"])
    assert keys == {q["key"] for q in QUESTION_BANK}
    a = {**attrs[world["vqa"][0]["image"]], "bag": "none", "bag_color": "none", "upper_type": "t-shirt"}
    assert answer_from_attributes(a, "has_bag") == "no" and answer_from_attributes(a, "sleeve_length") == "short"
    with pytest.raises(ValueError, match="valid"):
        answer_from_attributes(a, "shoe_size")


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="captions_per_image"):
        WorldConfig(captions_per_image=1)
    with pytest.raises(ValueError, match="test_fraction"):
        WorldConfig(val_fraction=0.5, test_fraction=0.6)


def test_stated_attributes_read_back_what_each_caption_says():
    from finetune.data.world import sample_attributes, stated_attributes, value_words

    rng = np.random.default_rng(3)
    for template in range(len(CAPTION_TEMPLATES)):
        attrs = sample_attributes(rng)
        caption = describe(attrs, rng, template)
        said = stated_attributes(caption)
        assert {"upper_color", "upper_type"} <= said, caption  # every template names the upper garment
        for attr in said - {"gender", "hat", "glasses", "bag", "bag_color"}:
            # each stated value's words are in the caption (hat/glasses/bag may be stated as absent)
            assert value_words(attr, attrs[attr]) & set(words(caption.lower())), (attr, caption)
    assert stated_attributes("a person somewhere") == set()

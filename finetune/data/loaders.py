"""Read the synthetic world and real person / composed-retrieval datasets into the same record types
(`finetune.data.records`; docs/CONTRACTS.md section 1). `load_split` / `load_triplets` / `load_vqa` are the
only readers of these files: training, evaluation, the engine's callers and the benchmarks all go through them.

Real layouts (as distributed):
- CUHK-PEDES: `reid_raw.json` (list of {split, captions, file_path, processed_tokens, id (1-based)}) + `imgs/`
- ICFG-PEDES: `ICFG-PEDES.json` (same keys, 0-based ids, train/test) + `imgs/`
- RSTPReid: `data_captions.json` ({split, captions, img_path, id}) + `imgs/`
- UFine6926: a `*ufine*.json` ({split, id, file_path, captions}) + `imgs/` (or paths relative to the root)
- CIRR: `captions/cap.rc2.<split>.json` ({reference, target_hard, caption, ...}) and
  `image_splits/split.rc2.<split>.json` (name -> relative path)
- FashionIQ: `captions/cap.<category>.<split>.json` ({candidate, target, captions[2]}) + `images/<name>.png`

Records whose image file is missing are skipped and the count is logged (a warning naming the first).
Malformed files raise LineupError naming file and field.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from finetune.data.jsonl import read_jsonl
from finetune.data.records import PersonImage, Triplet, VqaPair
from mllm_embed.errors import LineupError

log = logging.getLogger(__name__)

PERSON_FORMATS = ("auto", "world", "cuhk-pedes", "icfg-pedes", "rstpreid", "ufine6926")
TRIPLET_FORMATS = ("auto", "world", "cirr", "fashioniq")


@dataclass(frozen=True)
class _PersonSpec:
    label: str
    files: tuple[str, ...]
    image_key: str
    id_offset: int  # added to the file's id to make person ids 0-based where the file is 1-based


_PERSON_SPECS = {
    "cuhk-pedes": _PersonSpec("CUHK-PEDES", ("reid_raw.json",), "file_path", -1),
    "icfg-pedes": _PersonSpec("ICFG-PEDES", ("ICFG-PEDES.json", "ICFG_PEDES.json"), "file_path", 0),
    "rstpreid": _PersonSpec("RSTPReid", ("data_captions.json",), "img_path", 0),
    "ufine6926": _PersonSpec("UFine6926", ("ufine6926.json", "UFine6926.json"), "file_path", 0),
}


# ----------------------------------------------------------------------------------------------- helpers

def _read_json(path: Path, label: str):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LineupError(f"{path.name}: not valid JSON ({e.msg}, line {e.lineno}) — is this a {label} file?") from e
    except OSError as e:
        raise LineupError(f"{path}: cannot read ({e.strerror})") from e


def _get(item, key: str, i: int, fname: str, label: str, kind=None):
    if not isinstance(item, dict):
        raise LineupError(f"{fname}: item {i} is not a JSON object — is this a {label} file?")
    if key not in item:
        raise LineupError(f"{fname}: item {i} has no '{key}' field — is this a {label} file?")
    value = item[key]
    if kind is list and not (isinstance(value, list) and all(isinstance(c, str) for c in value)):
        raise LineupError(f"{fname}: item {i} field '{key}' must be a list of strings")
    if kind is int and not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        raise LineupError(f"{fname}: item {i} field '{key}' must be an integer, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise LineupError(f"{fname}: item {i} field '{key}' must be a string, got {type(value).__name__}")
    return int(value) if kind is int else value


def _as_list(data, fname: str, label: str) -> list:
    if not isinstance(data, list):
        raise LineupError(f"{fname}: expected a JSON list of records, got {type(data).__name__} — is this a "
                          f"{label} file?")
    return data


def _find_image(root: Path, rel: str, subdirs: tuple[str, ...]) -> Path | None:
    for sub in subdirs:
        p = (root / sub / rel) if sub else (root / rel)
        if p.is_file():
            return p.resolve()
    return None


def _finish(rows: list, total: int, missing: list[str], source: Path, label: str) -> list:
    if missing:
        log.warning("%s: skipped %d of %d records whose image file is missing (first: %s)", source, len(missing),
                    total, missing[0])
    if not total:
        raise LineupError(f"{source}: holds no {label} records with targets/images to load")
    if not rows:
        raise LineupError(f"{source}: none of the {total} images it lists exist (first: {missing[0]}) — point the "
                          f"path at the {label} folder that holds the images")
    return rows


def _in_split(rows: list, split: str | None) -> list:
    return rows if split in (None, "all") else [r for r in rows if r.split == split]


# ------------------------------------------------------------------------------------------- person data

def _detect_person(path: Path) -> tuple[str, Path]:
    """(format, annotation file) for a dataset folder or an annotation file."""
    if path.is_file():
        if path.name == "annotations.jsonl":
            return "world", path
        for fmt, spec in _PERSON_SPECS.items():
            if path.name in spec.files or (fmt == "ufine6926" and "ufine" in path.name.lower()):
                return fmt, path
        raise LineupError(f"{path}: unknown annotation file — pass fmt= one of {', '.join(PERSON_FORMATS[1:])}")
    if not path.is_dir():
        raise LineupError(f"{path}: no such file or folder")
    if (path / "annotations.jsonl").is_file():
        return "world", path / "annotations.jsonl"
    for fmt, spec in _PERSON_SPECS.items():
        for name in spec.files:
            if (path / name).is_file():
                return fmt, path / name
    ufine = sorted(p for p in path.glob("*.json") if "ufine" in p.name.lower())
    if ufine:
        return "ufine6926", ufine[0]
    raise LineupError(f"{path}: no annotations.jsonl, reid_raw.json, ICFG-PEDES.json, data_captions.json or "
                      f"*ufine*.json here — point at a dataset folder or pass fmt=")


def _annotation_file(path: Path, fmt: str) -> Path:
    if path.is_file():
        return path
    names = ("annotations.jsonl",) if fmt == "world" else _PERSON_SPECS[fmt].files
    for name in names:
        if (path / name).is_file():
            return path / name
    if fmt == "ufine6926":
        found = sorted(p for p in path.glob("*.json") if "ufine" in p.name.lower())
        if found:
            return found[0]
    raise LineupError(f"{path}: no {' or '.join(names)} found for fmt={fmt!r}")


def load_split(path, split: str | None, fmt: str = "auto", required: bool = False) -> list[PersonImage]:
    """The person images of one split (None or "all": every split), in the annotation file's order.

    fmt: one of PERSON_FORMATS ("auto" detects it from the folder). required=True: an empty split is a
    LineupError naming the splits there are."""
    rows = _load_people(path, fmt)
    chosen = _in_split(rows, split)
    if required and not chosen:
        raise LineupError(f"{path}: split {split!r} is empty — pick another split (here: "
                          f"{', '.join(sorted({r.split for r in rows}))})")
    return chosen


def _load_people(path, fmt: str) -> list[PersonImage]:
    if fmt not in PERSON_FORMATS:
        raise LineupError(f"unknown person dataset format {fmt!r}; valid: {', '.join(PERSON_FORMATS)}")
    path = Path(path).expanduser()
    if fmt == "auto":
        fmt, ann = _detect_person(path)
    else:
        ann = _annotation_file(path, fmt)
    if fmt == "world":
        return _load_world_people(ann)
    spec = _PERSON_SPECS[fmt]
    items = _as_list(_read_json(ann, spec.label), ann.name, spec.label)
    rows, missing = [], []
    for i, item in enumerate(items):
        rel = _get(item, spec.image_key, i, ann.name, spec.label, str)
        captions = _get(item, "captions", i, ann.name, spec.label, list)
        pid = _get(item, "id", i, ann.name, spec.label, int) + spec.id_offset
        split = _get(item, "split", i, ann.name, spec.label, str)
        image = _find_image(ann.parent, rel, ("imgs", ""))
        if image is None:
            missing.append(rel)
            continue
        cam = re.search(r"_c(\d+)_", Path(rel).name) if fmt == "rstpreid" else None
        rows.append(PersonImage(image=str(image), person_id=pid, camera_id=int(cam.group(1)) if cam else -1,
                                split=split, captions=tuple(captions)))
    return _finish(rows, len(items), missing, ann, spec.label)


def _load_world_people(ann: Path) -> list[PersonImage]:
    rows, missing = [], []
    items = read_jsonl(ann)
    for i, item in enumerate(items):
        rel = _get(item, "image", i, ann.name, "world", str)
        image = ann.parent / rel
        if not image.is_file():
            missing.append(rel)
            continue
        noisy = item.get("noisy_caption") or None
        rows.append(PersonImage(image=str(image.resolve()),
                                person_id=_get(item, "person_id", i, ann.name, "world", int),
                                camera_id=int(item.get("camera_id", -1)),
                                split=_get(item, "split", i, ann.name, "world", str),
                                captions=tuple(_get(item, "captions", i, ann.name, "world", list)),
                                attributes=item.get("attributes") or None,
                                noisy_caption=noisy,
                                noisy_words=tuple(item.get("noisy_words") or ()) if noisy else ()))
    return _finish(rows, len(items), missing, ann, "world")


# ------------------------------------------------------------------------------------------------ triplets

def _world_dir(path: Path, name: str) -> Path:
    return path if path.is_file() else path / name


def load_triplets(path, split: str | None = None, fmt: str = "auto") -> list[Triplet]:
    """The composed-retrieval triplets of one split (None or "all": every split), in file order. For
    CIRR/FashionIQ (no person ids) the ids number the distinct images (over all splits)."""
    return _in_split(_load_triplets(path, fmt), split)


def _load_triplets(path, fmt: str) -> list[Triplet]:
    if fmt not in TRIPLET_FORMATS:
        raise LineupError(f"unknown triplet format {fmt!r}; valid: {', '.join(TRIPLET_FORMATS)}")
    path = Path(path).expanduser()
    if fmt == "auto":
        if path.name == "triplets.jsonl" or (path / "triplets.jsonl").is_file():
            fmt = "world"
        elif list(path.glob("captions/cap.rc2.*.json")):
            fmt = "cirr"
        elif list(path.glob("captions/cap.*.*.json")):
            fmt = "fashioniq"
        else:
            raise LineupError(f"{path}: no triplets.jsonl, captions/cap.rc2.<split>.json (CIRR) or "
                              f"captions/cap.<category>.<split>.json (FashionIQ) — pass fmt= or fix the path")
    if fmt == "world":
        return _load_world_triplets(_world_dir(path, "triplets.jsonl"))
    if fmt == "cirr":
        return _load_cirr(path)
    return _load_fashioniq(path)


def _load_world_triplets(ann: Path) -> list[Triplet]:
    items = read_jsonl(ann)
    rows, missing = [], []
    for i, t in enumerate(items):
        ref, tgt = (ann.parent / _get(t, k, i, ann.name, "world", str) for k in ("reference", "target"))
        if not (ref.is_file() and tgt.is_file()):
            missing.append(str(ref if not ref.is_file() else tgt))
            continue
        rows.append(Triplet(reference=str(ref.resolve()),
                            modification=_get(t, "modification", i, ann.name, "world", str),
                            target=str(tgt.resolve()), reference_id=_get(t, "reference_id", i, ann.name, "world", int),
                            target_id=_get(t, "target_id", i, ann.name, "world", int),
                            split=_get(t, "split", i, ann.name, "world", str)))
    return _finish(rows, len(items), missing, ann, "world")


class _ImageIds:
    """Stable integer ids for image names (CIRR / FashionIQ have no person ids)."""

    def __init__(self):
        self.ids: dict[str, int] = {}

    def __call__(self, name: str) -> int:
        return self.ids.setdefault(name, len(self.ids))


def _load_cirr(root: Path) -> list[Triplet]:
    rows, missing, total, ids = [], [], 0, _ImageIds()
    for cap_file in sorted(root.glob("captions/cap.rc2.*.json")):
        split = cap_file.name.split(".")[2]
        split_file = root / "image_splits" / f"split.rc2.{split}.json"
        if not split_file.is_file():
            raise LineupError(f"{cap_file.name}: its image list image_splits/{split_file.name} is missing")
        names = _read_json(split_file, "CIRR")
        if not isinstance(names, dict):
            raise LineupError(f"{split_file.name}: expected a JSON object name -> relative path — is this a CIRR file?")
        items = _as_list(_read_json(cap_file, "CIRR"), cap_file.name, "CIRR")
        for i, item in enumerate(items):
            ref_name = _get(item, "reference", i, cap_file.name, "CIRR", str)
            caption = _get(item, "caption", i, cap_file.name, "CIRR", str)
            if "target_hard" not in item:  # the test1 split hides its targets: nothing to learn or score
                continue
            total += 1
            tgt_name = _get(item, "target_hard", i, cap_file.name, "CIRR", str)
            for name in (ref_name, tgt_name):
                if name not in names:
                    raise LineupError(f"{cap_file.name}: item {i} names image {name!r}, which {split_file.name} "
                                      f"does not list")
            ref, tgt = (_find_image(root, names[n], ("", "img_raw")) for n in (ref_name, tgt_name))
            if ref is None or tgt is None:
                missing.append(names[ref_name] if ref is None else names[tgt_name])
                continue
            rows.append(Triplet(reference=str(ref), modification=caption, target=str(tgt),
                                reference_id=ids(ref_name), target_id=ids(tgt_name), split=split))
    return _finish(rows, total, missing, root, "CIRR")


def _load_fashioniq(root: Path) -> list[Triplet]:
    rows, missing, total, ids = [], [], 0, _ImageIds()
    for cap_file in sorted(root.glob("captions/cap.*.*.json")):
        parts = cap_file.name.split(".")
        if len(parts) != 4:
            continue
        split = parts[2]
        items = _as_list(_read_json(cap_file, "FashionIQ"), cap_file.name, "FashionIQ")
        for i, item in enumerate(items):
            captions = _get(item, "captions", i, cap_file.name, "FashionIQ", list)
            cand = _get(item, "candidate", i, cap_file.name, "FashionIQ", str)
            if "target" not in item:  # test captions without targets
                continue
            total += 1
            tgt_name = _get(item, "target", i, cap_file.name, "FashionIQ", str)
            ref, tgt = (_find_image(root / "images", f"{n}.png", ("",)) for n in (cand, tgt_name))
            if ref is None or tgt is None:
                missing.append(f"images/{cand if ref is None else tgt_name}.png")
                continue
            rows.append(Triplet(reference=str(ref), modification=" and ".join(c.strip().rstrip(".") for c in captions),
                                target=str(tgt), reference_id=ids(cand), target_id=ids(tgt_name), split=split))
    return _finish(rows, total, missing, root, "FashionIQ")


# ----------------------------------------------------------------------------------------------------- VQA

def load_vqa(path, split: str | None = None) -> list[VqaPair]:
    """The world's VQA pairs of one split (None or "all": every split), in file order."""
    ann = _world_dir(Path(path).expanduser(), "vqa.jsonl")
    items = read_jsonl(ann)
    rows, missing = [], []
    for i, q in enumerate(items):
        image = ann.parent / _get(q, "image", i, ann.name, "world", str)
        if not image.is_file():
            missing.append(str(image))
            continue
        fields = {k: _get(q, k, i, ann.name, "world", str) for k in ("question", "answer", "attribute", "split")}
        rows.append(VqaPair(image=str(image.resolve()), **fields))
    return _in_split(_finish(rows, len(items), missing, ann, "world"), split)


# ------------------------------------------------------------------------- composed benchmarks (protocols)

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")


def composed_benchmark_format(path) -> str | None:
    """"cirr" or "fashioniq" when `path` is a folder in that benchmark's distributed layout, else None."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return None
    if list(path.glob("captions/cap.rc2.*.json")):
        return "cirr"
    if list(path.glob("captions/cap.*.*.json")) and list(path.glob("image_splits/split.*.*.json")):
        return "fashioniq"
    return None


def _image_list(split_file: Path, label: str):
    if not split_file.is_file():
        raise LineupError(f"{split_file}: not found — the {label} protocol's gallery is this image_splits file")
    return _read_json(split_file, label)


def load_cirr_benchmark(path, split: str = "val") -> dict:
    """CIRR's official protocol inputs for one split (`val` or `train`; `test1` hides its targets — its
    results go to the CIRR evaluation server).

    Returns {"gallery": [(name, absolute path)] — every image of `image_splits/split.rc2.<split>.json` whose file
    exists, "queries": [{"reference", "caption", "target", "members"}] (image names; `members` = the query's
    img_set), "skipped_missing_images": int}. Queries whose reference or target image is missing are skipped.
    """
    root = Path(path).expanduser()
    cap_file = root / "captions" / f"cap.rc2.{split}.json"
    if not cap_file.is_file():
        found = sorted(p.name.split(".")[2] for p in root.glob("captions/cap.rc2.*.json"))
        raise LineupError(f"{cap_file}: not found — CIRR splits here: {found}")
    names = _image_list(root / "image_splits" / f"split.rc2.{split}.json", "CIRR")
    if not isinstance(names, dict):
        raise LineupError(f"split.rc2.{split}.json: expected a JSON object name -> relative path — is this CIRR?")
    gallery, missing = [], 0
    for name, rel in names.items():
        image = _find_image(root, rel, ("", "img_raw"))
        if image is None:
            missing += 1
        else:
            gallery.append((name, str(image)))
    present = {n for n, _ in gallery}
    queries = []
    for i, item in enumerate(_as_list(_read_json(cap_file, "CIRR"), cap_file.name, "CIRR")):
        if "target_hard" not in item:
            raise LineupError(f"{cap_file.name}: item {i} has no 'target_hard' — CIRR's test1 split hides its "
                              "targets (submit to the CIRR evaluation server); evaluate --split val")
        query = {"reference": _get(item, "reference", i, cap_file.name, "CIRR", str),
                 "caption": _get(item, "caption", i, cap_file.name, "CIRR", str),
                 "target": _get(item, "target_hard", i, cap_file.name, "CIRR", str),
                 "members": _get(_get(item, "img_set", i, cap_file.name, "CIRR"), "members", i, cap_file.name,
                                 "CIRR", list)}
        if query["reference"] in present and query["target"] in present:
            queries.append(query)
    if not queries:
        raise LineupError(f"{root}: no CIRR {split} query has both images on disk — point at the folder holding "
                          "captions/, image_splits/ and the images (img_raw/ or dev/, train/)")
    if missing:
        log.warning("%s: %d of %d CIRR %s gallery images are missing", root, missing, len(names), split)
    return {"gallery": gallery, "queries": queries, "skipped_missing_images": missing}


def load_fashioniq_benchmark(path, category: str, split: str = "val") -> dict:
    """FashionIQ's protocol inputs for one category and split: {"gallery": [(name, path)] — the names of
    `image_splits/split.<category>.<split>.json` found under images/ (.png, else .jpg), "queries":
    [{"reference", "caption" (the two captions joined with " and "), "target"}], "skipped_missing_images"}."""
    root = Path(path).expanduser()
    if category not in FASHIONIQ_CATEGORIES:
        raise LineupError(f"FashionIQ category {category!r}: choose one of {FASHIONIQ_CATEGORIES}")
    names = _image_list(root / "image_splits" / f"split.{category}.{split}.json", "FashionIQ")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise LineupError(f"split.{category}.{split}.json: expected a JSON list of image names — is this FashionIQ?")
    gallery, missing = [], 0
    for name in names:
        image = _find_image(root / "images", f"{name}.png", ("",)) or _find_image(root / "images", f"{name}.jpg", ("",))
        if image is None:
            missing += 1
        else:
            gallery.append((name, str(image)))
    present = {n for n, _ in gallery}
    cap_file = root / "captions" / f"cap.{category}.{split}.json"
    queries = []
    for i, item in enumerate(_as_list(_read_json(cap_file, "FashionIQ"), cap_file.name, "FashionIQ")):
        if "target" not in item:
            raise LineupError(f"{cap_file.name}: item {i} has no 'target' — FashionIQ's test split hides its "
                              "targets; evaluate --split val")
        captions = _get(item, "captions", i, cap_file.name, "FashionIQ", list)
        query = {"reference": _get(item, "candidate", i, cap_file.name, "FashionIQ", str),
                 "caption": " and ".join(c.strip().rstrip(".") for c in captions),
                 "target": _get(item, "target", i, cap_file.name, "FashionIQ", str)}
        if query["reference"] in present and query["target"] in present:
            queries.append(query)
    if not queries:
        raise LineupError(f"{root}: no FashionIQ {category} {split} query has both images under images/")
    if missing:
        log.warning("%s: %d of %d FashionIQ %s %s gallery images are missing", root, missing, len(names), category,
                    split)
    return {"gallery": gallery, "queries": queries, "skipped_missing_images": missing}

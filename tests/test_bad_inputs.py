"""Bad input and faults through `cli.main.main([...])`: each case exits 2 with exactly one line that says what
is wrong, no traceback, and leaves the project's files exactly as they were. Input checks run before any model
loads, so most cases take milliseconds; the few that need a model to fail on (damaged weights) load the tiny
test base."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from cli.main import main
from finetune.bootstrap import MARKERS

MARKER = "REMOTE_CODE_RAN"


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width×height pixels (PIL's decompression-bomb check reads the header only)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def project(tiny_world, tiny_base, tiny_adapter, tmp_path_factory) -> Path:
    """A small project (world, model, stage-1 adapter) plus a folder of broken inputs beside it."""
    root = tmp_path_factory.mktemp("bad-inputs")
    proj = root / "proj"
    shutil.copytree(tiny_world, proj / "world")
    shutil.copytree(tiny_base, proj / "model")
    for marker in MARKERS:  # a finished base: every bootstrap step has left its marker
        path = proj / "model" / marker
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            path.write_text('{"counts": {}}')
    shutil.copytree(tiny_adapter, proj / "runs" / "stage1" / "adapter")
    bad = root / "bad"
    bad.mkdir()
    image = sorted((proj / "world" / "images").glob("*.png"))[0]

    (bad / "not_image.png").write_text("this is text, not a PNG")
    _png_header_only(bad / "bomb.png", 20000, 20000)
    (bad / "queries.jsonl").write_text(json.dumps({"text": "a man in red"}) + "\n")
    (bad / "k_inf.jsonl").write_text('{"text": "a man"}\n{"text": "a woman", "k": 1e999}\n')
    (bad / "latin1.jsonl").write_bytes('{"text": "a man"}\n{"text": "caf\u00e9 owner"}\n'.encode("latin-1"))
    (bad / "bad_filter.jsonl").write_text('{"text": "a man"}\n{"text": "a woman", "filter": {"colour": "red"}}\n'
                                          '{"text": "a child"}\n')
    (bad / "range_filter.csv").write_text('text,filter\na man,"{""camera_id"": {""gt"": 1}}"\n')
    (bad / "missing_image.jsonl").write_text(json.dumps({"image": "nowhere.png"}) + "\n")
    (bad / "captions.jsonl").write_text(json.dumps({"caption": "a man in red"}) + "\n")

    def model_like(name: str, files: list[str]) -> None:
        (bad / name).mkdir()
        for f in files:
            shutil.copy(proj / "model" / f, bad / name / f)

    model_like("no_weights", ["config.json"])
    model_like("bin_only", ["config.json"])
    (bad / "bin_only" / "pytorch_model.bin").write_bytes(b"pickle")
    model_like("truncated", [f.name for f in (proj / "model").iterdir() if f.is_file()])
    data = (bad / "truncated" / "model.safetensors").read_bytes()
    (bad / "truncated" / "model.safetensors").write_bytes(data[: len(data) // 3])
    # a config whose auto_map points at code in the folder: with trust_remote_code=False it never runs
    model_like("remote_code", ["config.json", "model.safetensors"])
    cfg = json.loads((bad / "remote_code" / "config.json").read_text())
    cfg.update(model_type="evil_llava", auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
    (bad / "remote_code" / "config.json").write_text(json.dumps(cfg))
    (bad / "remote_code" / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(root / MARKER)!r}).write_text('ran')\n")

    shutil.copytree(proj / "runs" / "stage1" / "adapter", bad / "adapter_no_config")
    (bad / "adapter_no_config" / "adapter_config.json").unlink()
    shutil.copytree(proj / "runs" / "stage1" / "adapter", bad / "adapter_truncated")
    weights = bad / "adapter_truncated" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (bad / "a_file").write_text("x")
    (bad / "image.png").write_bytes(image.read_bytes())
    return root


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


P, B = "{proj}", "{bad}"
SEARCH = ["search", "--text", "a man in red"]

# (id, argv, a regex the one line must match)
CASES = [
    # no silent damage
    ("world-over-existing-world", ["world", "--out", f"{P}/world"], r"already holds a world; pass --force"),
    ("world-into-non-world-folder", ["world", "--out", f"{P}/model", "--force"], r"not empty and not a world"),
    ("world-identities-0", ["world", "--identities", "0", "--out", f"{B}/w"], r"--identities: 0 must be >= 3"),
    ("world-out-is-a-file", ["world", "--out", f"{B}/a_file"], r"is a file"),
    ("bootstrap-over-existing-model", ["bootstrap", "--out", f"{P}/model"], r"already holds a model"),
    ("bootstrap-epochs-0", ["bootstrap", "--epochs", "0"], r"--epochs: 0 must be >= 1"),
    ("batch-out-is-the-queries", ["batch", "--queries", f"{B}/queries.jsonl", "--out", f"{B}/queries.jsonl"],
     r"is the queries file"),
    ("rewrite-out-is-the-captions", ["rewrite", "--rewriter", f"{P}/model", "--captions", f"{B}/captions.jsonl",
                                     "--out", f"{B}/captions.jsonl"], r"is the --captions input"),
    # store and collection names
    ("collection-escapes-project", SEARCH + ["--collection", "../../x"], r"collection name '../../x'"),
    ("collection-absolute-path", SEARCH + ["--collection", "/tmp/x"], r"no path separators"),
    ("qdrant-url-and-path", SEARCH + ["--qdrant-url", "http://127.0.0.1:1", "--qdrant-path", f"{B}/q"],
     r"--qdrant-path: not allowed with argument --qdrant-url"),
    ("qdrant-url-no-server", SEARCH + ["--qdrant-url", "http://127.0.0.1:1"], r"no Qdrant server answers there"),
    ("qdrant-url-bad-port", SEARCH + ["--qdrant-url", "http://localhost:99999"], r"no Qdrant server answers there"),
    # filters and numbers
    ("filter-unknown-field", SEARCH + ["--filter", "colour=red"], r"'colour' is not stored; filter on one of: "
                                                                  r"person_id, camera_id"),
    ("filter-range", SEARCH + ["--filter", 'camera_id={"gt":1}'], r"ranges are not supported"),
    ("filter-overlong-int", SEARCH + ["--filter", "camera_id=" + "9" * 30], r"out of range"),
    ("filter-int-field-text", SEARCH + ["--filter", "camera_id=three"], r"camera_id is an integer"),
    ("filter-no-equals", SEARCH + ["--filter", "camera_id"], r"expected FIELD=VALUE"),
    ("search-k-0", SEARCH + ["-k", "0"], r"--top-k: 0 must be >= 1"),
    ("search-k-huge", SEARCH + ["-k", "10000000000"], r"must be <= "),
    ("index-batch-size-0", ["index", "--batch-size", "0"], r"--batch-size: 0 must be >= 1"),
    ("index-batch-size-negative", ["index", "--batch-size", "-1"], r"--batch-size: -1 must be >= 1"),
    ("index-images-not-a-folder", ["index", "--images", f"{B}/nowhere"], r"not a folder"),
    ("index-empty-split", ["index", "--split", "nosuch"], r"split 'nosuch' is empty"),
    ("index-skipped-list-unwritable", ["index", "--skipped-list", f"{B}/a_file/list.txt"], r"not a writable folder"),
    ("eval-thi-rounds-0", ["eval", "--thi-rounds", "0"], r"--thi-rounds: 0 must be >= 1"),
    ("train-epochs-0", ["train", "stage1", "--epochs", "0"], r"epochs.*must be >= 1"),
    ("caption-per-image-0", ["caption", "--images", f"{P}/world/images", "--out", f"{B}/c.jsonl",
                             "--per-image", "0"], r"--per-image: 0 must be >= 1"),
    ("missing-required-flag", ["batch", "--queries", f"{B}/queries.jsonl"], r"required: --out"),
    # images
    ("image-missing", ["search", "--image", f"{B}/nowhere.png"], r"nowhere.png: no such file"),
    ("image-not-an-image", ["search", "--image", f"{B}/not_image.png"], r"cannot read image"),
    ("image-decompression-bomb", ["search", "--image", f"{B}/bomb.png"], r"too large to decode safely"),
    # output places
    ("sheet-unwritable", SEARCH + ["--sheet", f"{B}/a_file/sheet.png"], r"--sheet .*not a writable folder"),
    ("sheet-is-a-folder", SEARCH + ["--sheet", f"{B}"], r"--sheet .*is a folder"),
    ("eval-json-unwritable", ["eval", "--json", f"{B}/a_file/r.json"], r"--json .*not a writable folder"),
    ("chat-transcript-unwritable", ["chat", "--transcript", f"{B}/a_file/t.txt"], r"--transcript .*not a writable"),
    ("batch-out-unwritable", ["batch", "--queries", f"{B}/queries.jsonl", "--out", f"{B}/a_file/o.jsonl"],
     r"--out .*not a writable folder"),
    ("batch-out-unknown-format", ["batch", "--queries", f"{B}/queries.jsonl", "--out", f"{B}/o.xlsx"],
     r"unknown format '.xlsx'"),
    # batch files, checked completely before the model loads
    ("batch-k-1e999", ["batch", "--queries", f"{B}/k_inf.jsonl", "--out", f"{B}/o.jsonl"],
     r"k_inf.jsonl:2: k=inf must be an integer"),
    ("batch-latin-1", ["batch", "--queries", f"{B}/latin1.jsonl", "--out", f"{B}/o.jsonl"],
     r"latin1.jsonl:2: not UTF-8"),
    ("batch-bad-filter-line", ["batch", "--queries", f"{B}/bad_filter.jsonl", "--out", f"{B}/o.jsonl"],
     r"bad_filter.jsonl:2: filter field 'colour' is not stored"),
    ("batch-range-filter-csv", ["batch", "--queries", f"{B}/range_filter.csv", "--out", f"{B}/o.jsonl"],
     r"range_filter.csv:2: filter camera_id=.*ranges are not supported"),
    ("batch-missing-image", ["batch", "--queries", f"{B}/missing_image.jsonl", "--out", f"{B}/o.jsonl"],
     r"missing_image.jsonl:1: image 'nowhere.png' not found"),
    ("batch-queries-missing", ["batch", "--queries", f"{B}/nowhere.jsonl", "--out", f"{B}/o.jsonl"],
     r"no such file"),
    # model and adapter folders: checked before loading, no hub retries
    ("model-not-a-folder-offline", SEARCH + ["--model", "nosuchmodel"], r"not in the hub cache.*unreachable"),
    ("model-config-no-weights", SEARCH + ["--model", f"{B}/no_weights"], r"no weights \(model.safetensors"),
    ("model-bin-only", SEARCH + ["--model", f"{B}/bin_only"], r"only .bin/.pt weights"),
    ("model-remote-code", SEARCH + ["--model", f"{B}/remote_code"], r"--model .*remote_code"),
    ("adapter-missing", SEARCH + ["--adapter", f"{B}/nowhere"], r"--adapter .*no such folder"),
    ("adapter-no-config", SEARCH + ["--adapter", f"{B}/adapter_no_config"], r"adapter_config.json missing"),
    # faults found while loading (the tiny base loads, then the damaged file is named)
    ("model-truncated-safetensors", SEARCH + ["--model", f"{B}/truncated"], r"cannot load the weights"),
    ("adapter-truncated-weights", SEARCH + ["--adapter", f"{B}/adapter_truncated"], r"cannot load the adapter"),
]


@pytest.mark.parametrize("case,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(project, case, argv, message, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proj, bad = project / "proj", project / "bad"
    argv = [a.replace(P, str(proj)).replace(B, str(bad)) for a in argv]
    before = _tree_hash(proj)
    capsys.readouterr()
    rc = main(argv + ["--project", str(proj)] if "--project" not in argv else argv)
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert rc == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "Traceback" not in lines[0]
    import re

    assert re.search(message, lines[0]), lines[0]
    assert _tree_hash(proj) == before
    assert not (project / MARKER).exists()


def test_a_model_name_fails_at_once_when_the_hub_cannot_be_reached(monkeypatch):
    """Not offline by setting, but no route to the hub: one connection attempt, then one line (transformers
    would retry for half a minute)."""
    import socket
    import time

    from mllm_embed.errors import LineupError
    from mllm_embed.files import check_model_source

    attempts = []

    def unreachable(address, timeout=None, *args, **kwargs):
        attempts.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.perf_counter()
    with pytest.raises(LineupError, match="nosuchmodel: not a folder here, not in the hub cache"):
        check_model_source("nosuchmodel")
    assert len(attempts) == 1 and attempts[0][1] <= 5 and time.perf_counter() - start < 5


def test_index_skips_unreadable_images_and_keeps_every_good_one(project, tmp_path, capsys):
    images = sorted((project / "proj" / "world" / "images").glob("*.png"))[:5]
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for image in images:
        shutil.copy(image, gallery / image.name)
    shutil.copy(project / "bad" / "not_image.png", gallery / "a_not_image.png")
    shutil.copy(project / "bad" / "bomb.png", gallery / "b_bomb.png")
    listing = tmp_path / "reports" / "skipped.tsv"
    argv = ["index", "--images", str(gallery), "--batch-size", "4", "--collection", "mixed", "--skipped-list",
            str(listing), "--qdrant-path", str(tmp_path / "q"), "--project", str(project / "proj")]
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "indexed 5 new images; collection 'mixed' holds 5" in out  # the bad files' batch-mates are kept
    assert "skipped 2 unreadable image(s): a_not_image.png, b_bomb.png" in out and str(listing) in out
    rows = [line.split("\t") for line in listing.read_text().splitlines()]
    assert [Path(r[0]).name for r in rows] == ["a_not_image.png", "b_bomb.png"]
    assert "cannot read image" in rows[0][1] and "too large" in rows[1][1]
    assert main(argv) == 0  # resumable: nothing new, the same two reported again
    assert "indexed 0 new images; collection 'mixed' holds 5" in capsys.readouterr().out


def test_a_copied_project_keeps_its_collection_and_other_weights_are_refused(project, tmp_path, capsys):
    from types import SimpleNamespace

    from mllm_embed.errors import LineupError
    from retrieval.engine import embedder_meta
    from retrieval.store import open_store

    original = tmp_path / "original"
    shutil.copytree(project / "proj", original)
    common = ["--collection", "people", "--project"]
    assert main(["index", "--split", "test", *common, str(original)]) == 0
    copy = tmp_path / "moved" / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # the copy must not depend on the original's paths
    capsys.readouterr()
    assert main(["search", "--text", "a man in a red shirt", "--no-preview", *common, str(copy)]) == 0
    assert "error" not in capsys.readouterr().out

    # other weights at the same adapter path change the recorded hash, and the collection refuses them
    adapter = copy / "runs" / "stage1" / "adapter"
    fake = SimpleNamespace(config=None, dim=8, adapter=str(adapter), base=str(copy / "model"))
    before = embedder_meta(fake)
    assert before["adapter_sha256"] and before["base_sha256"] and str(copy) not in json.dumps(before)
    weights = adapter / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    after = embedder_meta(fake)
    assert after["adapter_sha256"] != before["adapter_sha256"] and after["base_sha256"] == before["base_sha256"]
    with open_store(path=tmp_path / "q") as store:
        store.ensure_collection("c", 8, before)
        with pytest.raises(LineupError, match="adapter_sha256"):
            store.ensure_collection("c", 8, after)


def test_loading_an_adapter_with_trained_word_vectors_prints_no_peft_warning(tiny_base, tmp_path):
    """peft warns on every load of an adapter that saves the tied input embeddings; Lineup never merges, so
    the loader filters exactly that warning (the demo's adapters train their word vectors in full)."""
    import warnings

    from peft import LoraConfig

    from mllm_embed import load_embedder

    embedder = load_embedder(tiny_base, device="cpu")
    embedder.add_adapter(LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"]))
    embedder.save_adapter(tmp_path / "adapter")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        load_embedder(tiny_base, adapter=tmp_path / "adapter", device="cpu")
    assert not [w for w in seen if "tie_word_embeddings" in str(w.message)]
    with warnings.catch_warnings(record=True) as seen:  # the warning is real: peft itself still gives it
        warnings.simplefilter("always")
        from peft import PeftModel
        from transformers import AutoModelForImageTextToText

        PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_base), tmp_path / "adapter")
    assert [w for w in seen if "tie_word_embeddings" in str(w.message)]


def test_world_goes_into_a_missing_folder_and_is_replaced_only_whole_with_force(tmp_path, capsys):
    out = tmp_path / "not" / "yet" / "world"
    small = ["--identities", "3", "--images-per-id", "1"]
    assert main(["world", "--out", str(out), *small, "--seed", "1"]) == 0
    first = _tree_hash(out)
    capsys.readouterr()
    assert main(["world", "--out", str(out), *small, "--seed", "2"]) == 2
    assert "--force" in capsys.readouterr().out and _tree_hash(out) == first
    assert main(["world", "--out", str(out), *small, "--seed", "2", "--force"]) == 0
    assert _tree_hash(out) != first
    assert sorted(p.name for p in out.parent.iterdir()) == ["world"]  # no temp or old folder left behind

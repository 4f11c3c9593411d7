"""`lineup caption` (TDE) and `lineup rewrite` (LLM-DA + TFF) from the command line, on the tiny base."""

from __future__ import annotations

import json
import shutil

from cli.main import main


def test_caption_writes_template_captions_per_image(tiny_base, tiny_world, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for path in sorted((tiny_world / "images").glob("*.png"))[:3]:
        shutil.copy(path, images / path.name)
    out = tmp_path / "captions.jsonl"
    assert main(["caption", "--model", str(tiny_base), "--adapter", "none", "--images", str(images),
                 "--out", str(out), "--per-image", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"].rsplit("/", 1)[1] for r in rows] == sorted(p.name for p in images.iterdir())
    for row in rows:  # two different templates filled from the model's answers (plus its free description)
        assert len(row["captions"]) >= 2 and len(set(row["captions"])) == len(row["captions"])


def test_rewrite_filters_by_faithfulness_and_writes_training_rewrites(tiny_base, tmp_path, capsys):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_base)
    rewriter = tmp_path / "rewriter"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(rewriter)
    tok.save_pretrained(rewriter)
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"caption": "a woman in a red coat and black trousers"}) + "\n"
                        + json.dumps({"captions": ["a man with a blue backpack", "a girl in a yellow skirt"]}) + "\n")
    out = tmp_path / "rewrites.json"
    for threshold in ("0.5", "-1"):
        assert main(["rewrite", "--model", str(tiny_base), "--adapter", "none", "--rewriter", str(rewriter),
                     "--captions", str(captions), "--out", str(out), "--threshold", threshold]) == 0
        audit = [json.loads(line) for line in out.with_suffix(".tff.jsonl").read_text().splitlines()]
        assert len(audit) == 3
        kept = json.loads(out.read_text())
        for row in audit:  # the filter keeps exactly the rewrites at or above the threshold
            assert row["kept"] == (row["faithfulness"] >= float(threshold))
            assert (row["rewrite"] in kept.get(row["original"], [])) == row["kept"]
    assert sum(r["kept"] for r in audit) == sum(bool(r["rewrite"].strip()) for r in audit)  # -1 keeps all non-empty

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no caption field"}\n')
    capsys.readouterr()
    assert main(["rewrite", "--model", str(tiny_base), "--rewriter", str(rewriter), "--captions", str(bad),
                 "--out", str(out)]) == 2
    assert "bad.jsonl: row 1 has no 'caption' or 'captions' field" in capsys.readouterr().out

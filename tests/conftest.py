"""Session fixtures: one tiny world and one tiny pre-trained base shared by the whole suite.

Set LINEUP_TEST_CACHE=/some/dir during development to reuse them across pytest runs (CI builds fresh). Under
pytest-xdist (`-n 2`) the workers share one build: the first to need a fixture builds it under a file lock in
the run's common temp folder, the others wait for it and reuse it; OMP_NUM_THREADS is split between workers.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from filelock import FileLock

_THREADS = max(1, int(os.environ.get("OMP_NUM_THREADS", "2")))
torch.set_num_threads(max(1, _THREADS // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@contextmanager
def _cache_dir(tmp_path_factory, name: str):
    """The folder a session fixture is built in, held under a lock while the caller checks and builds it."""
    root = os.environ.get("LINEUP_TEST_CACHE")
    if root:
        path = Path(root) / name
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        path = tmp_path_factory.getbasetemp().parent / "shared" / name  # the temp folder all workers share
    else:
        path = tmp_path_factory.getbasetemp() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        threads = torch.get_num_threads()
        torch.set_num_threads(_THREADS)  # a worker waiting on this lock idles: the build takes its threads too
        try:
            yield path
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A small synthetic world: 48 identities x 4 images (owner: finetune.data.world)."""
    from finetune.data.world import WorldConfig, generate_world

    with _cache_dir(tmp_path_factory, "world") as out:
        if not (out / "world.json").exists():
            generate_world(out, WorldConfig(identities=48, images_per_id=4, seed=7))
    return out


@pytest.fixture(scope="session")
def tiny_base(tiny_world, tmp_path_factory) -> Path:
    """A tiny LLaVA-style base with a local tokenizer, briefly stage-0 pre-trained (owner: mllm_embed.tiny
    + finetune.stage0). Loaded through exactly the path a hub checkpoint takes. Its answers are not calibrated
    (no answer_confusion.json: they weigh by its stage-0 accuracies), so tests whose cache holds true answers
    re-rank by them."""
    from finetune.stage0 import Stage0Config, pretrain
    from finetune.data.world import world_texts
    from mllm_embed.tiny import build_tiny_base

    with _cache_dir(tmp_path_factory, "base") as out:
        if not (out / "config.json").exists() or not (out / "stage0_done.json").exists():
            build_tiny_base(world_texts(tiny_world), out, size="test")
            pretrain(out, tiny_world, Stage0Config.for_tests())
    return out


@pytest.fixture(scope="session")
def tiny_adapter(tiny_base, tiny_world, tmp_path_factory) -> Path:
    """A stage-1 LoRA adapter on the tiny base (~160 steps, about 40 s): shared by the training tests and the
    end-to-end tests that search with it. Its run folder (metrics.jsonl) is the adapter's parent."""
    from finetune.config import TrainConfig
    from finetune.train import train

    with _cache_dir(tmp_path_factory, "stage1") as out:
        adapter = out / "adapter"
        if not (adapter / "lineup_embedder.json").exists():
            train("stage1", TrainConfig.of(base_model=str(tiny_base), data=str(tiny_world), output_dir=str(out),
                                           epochs=40, eval_split=""))
    return adapter


@pytest.fixture(scope="session")
def tiny_gallery(tiny_world, tiny_base, tiny_adapter, tmp_path_factory) -> dict:
    """The world's test split indexed through the CLI with the stage-1 adapter, THI answers cached from ground
    truth (the simulated user's world: answers it gives and answers in the cache agree). Shared by the CLI
    end-to-end and pty tests, which only read it. `common` is the flags that reach it."""
    from cli.main import main
    from finetune.data import load_split
    from finetune.data.world import QUESTION_BANK, answer_from_attributes
    from mllm_embed import load_embedder
    from retrieval.engine import SearchEngine
    from retrieval.store import open_store

    qdrant = tmp_path_factory.mktemp("qdrant")
    common = ["--model", str(tiny_base), "--adapter", str(tiny_adapter), "--qdrant-path", str(qdrant)]
    assert main(["index", *common, "--dataset", str(tiny_world)]) == 0
    records = load_split(tiny_world, "test")
    attrs = {r.image: r.attributes for r in records}
    key_of = {q["question"]: q["key"] for q in QUESTION_BANK}
    with open_store(path=qdrant) as store:
        engine = SearchEngine(load_embedder(tiny_base, adapter=tiny_adapter), store, "gallery")
        engine.cache_answers(QUESTION_BANK, answer_fn=lambda img, q: answer_from_attributes(attrs[img], key_of[q]))
    return {"common": common, "records": records, "attrs": attrs, "qdrant": qdrant}

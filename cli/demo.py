"""`lineup demo`: the whole offline pipeline on a fresh machine, resumable step by step.

world → bootstrap (tokenizer, tiny base, stage 0) → stage 1 → stage 2 → index the test gallery into Qdrant
(with the MLLM's answers to the THI questions) → evaluate base/stage1/stage2 → THI rounds → two searches.
Every step leaves a marker in the project folder; an interrupted demo re-run skips finished steps and
resumes training from its last checkpoint and indexing from the last stored batch.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cli.project import Project
from cli.training import run_training, show_stage0
from cli.ui import TASK_TITLES, console, metrics_table, progress_bar, show_hits
from mllm_embed.errors import LineupError
from retrieval.judge import ANSWER_WEIGHT, world_vocabulary

if TYPE_CHECKING:
    from finetune.data import PersonImage


@dataclass
class DemoConfig:
    identities: int = field(default=800, metadata={"help": "world identities"})
    images_per_id: int = field(default=6, metadata={"help": "images per identity"})
    # held out by whole families of one-edit neighbours, so the splits hold about this many people
    val_people: int = field(default=16, metadata={"help": "identities held out for per-epoch validation"})
    test_people: int = field(default=32, metadata={"help": "identities held out for the evaluation and searches"})
    size: str = field(default="tiny", metadata={"help": "base model size preset (mllm_embed.tiny.SIZES)"})
    base: str | None = field(default=None, metadata={"help": "a finished base (`lineup bootstrap --out`) to copy "
                                                             "instead of the shipped one"})
    stage0_epochs: int | None = field(default=None, metadata={"help": "stage-0 epochs (None: the recipe's)"})
    stage1_epochs: int | None = field(default=None, metadata={"help": "stage-1 epochs (None: recipes/demo-stage1.yaml's)"})
    stage2_epochs: int | None = field(default=None, metadata={"help": "stage-2 epochs (None: recipes/demo-stage2.yaml's)"})
    thi_rounds: int = field(default=3, metadata={"help": "THI rounds evaluated"})
    thi_queries: int = field(default=200, metadata={"help": "THI evaluation queries (the first caption of each "
                                                              "test image, at most this many)"})

    @classmethod
    def fast(cls) -> DemoConfig:
        """A few minutes end to end: for smoke tests, not for numbers."""
        return cls(identities=40, images_per_id=4, size="test", stage0_epochs=3, stage1_epochs=1, stage2_epochs=1,
                   thi_rounds=2, thi_queries=10)

    def world(self):
        """The demo world: val_people / test_people held out, at most 10 % / 20 % of a small world."""
        from finetune.data.world import WorldConfig

        n = self.identities
        return WorldConfig(identities=n, images_per_id=self.images_per_id,
                           val_fraction=min(self.val_people / n, 0.1), test_fraction=min(self.test_people / n, 0.2))


def _step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def run_demo(project: Project, cfg: DemoConfig) -> dict:
    from finetune.data import load_split
    from finetune.data.world import QUESTION_BANK, generate_world
    from finetune.bootstrap import bootstrap_base
    from finetune.stage0 import DONE_FILE
    from finetune.config import RECIPES, TrainConfig
    from mllm_embed import load_embedder
    from mllm_embed.tiny import SHIPPED_BASES
    from retrieval.engine import SearchEngine
    from retrieval.store import open_store

    base = Path(cfg.base) if cfg.base else SHIPPED_BASES / cfg.size
    if cfg.base and not (base / DONE_FILE).exists():
        raise LineupError(f"--base {base}: no finished base there ({DONE_FILE} missing); build one with "
                          f"`lineup bootstrap --out {base}`")
    started, cpu_started = time.time(), time.process_time()
    project.root.mkdir(parents=True, exist_ok=True)
    report: dict = {"config": asdict(cfg)}

    _step("1/6 world")
    if not (project.world / "world.json").exists():
        with progress_bar("rendering world", total=None) as advance:
            generate_world(project.world, cfg.world(), progress=advance)
    console.print(f"world: {project.world}")

    if (base / DONE_FILE).exists():
        _step(f"2/6 the offline base ({base}; a shipped base's lineup_base.json holds the command that rebuilt it)")
        if not (project.model / DONE_FILE).exists():
            shutil.copytree(base, project.model, dirs_exist_ok=True)
    else:
        _step("2/6 bootstrap the offline base (local tokenizer, tiny MLLM, vision pre-training, stage 0)")
        with progress_bar("bootstrapping the base", total=None) as advance:
            bootstrap_base(project.world, project.model, size=cfg.size, stage0_epochs=cfg.stage0_epochs,
                           progress=lambda step, n: advance(n, info=step))
    show_stage0(project.model)

    train_people = json.loads((project.world / "world.json").read_text())["counts"]["train_identities"]
    for stage, epochs in (("stage1", cfg.stage1_epochs), ("stage2", cfg.stage2_epochs)):
        _step(f"{'3' if stage == 'stage1' else '4'}/6 {stage} LoRA fine-tune")
        if not (project.adapter(stage) / "lineup_embedder.json").exists():
            init = str(project.adapter("stage1")) if stage == "stage2" else None
            recipe = TrainConfig.from_recipe(RECIPES / f"demo-{stage}.yaml", stage)
            run_training(stage, recipe.with_overrides(
                {"base_model": str(project.model), "data": str(project.world), "output_dir": str(project.run(stage)),
                 "init_adapter": init, **({"epochs": epochs} if epochs else {}),
                 # a small world (--identities) has fewer people than a recipe batch
                 "ids_per_batch": min(recipe.batches.ids_per_batch, train_people)}))
        console.print(f"adapter: {project.adapter(stage)}")

    _step("5/6 index the test gallery into Qdrant, with the MLLM's answers to the THI questions")
    stage2 = load_embedder(project.model, adapter=project.adapter("stage2"))
    records = load_split(project.world, "test")
    with open_store(path=project.qdrant) as store:
        engine = SearchEngine(stage2, store, "gallery", vocabulary=world_vocabulary(), answer_weight=ANSWER_WEIGHT)
        with progress_bar("indexing", total=len(records)) as advance:
            engine.index_images(records, progress=advance)
        with progress_bar("caching THI answers", total=len(records)) as advance:
            engine.cache_answers(QUESTION_BANK, progress=advance)

        _step("6/6 evaluate base vs stage 1 vs stage 2, THI rounds, and two searches")
        answers = {h.payload["image"]: h.payload["answers"] for h in store.scroll("gallery")}
        report["eval"] = _evaluate(project, load_embedder, answers)
        report["thi"] = _thi(project, engine, records, cfg)
        report["search"] = _searches(project, engine, records)
    report["seconds"] = round(time.time() - started, 1)
    # CPU time of this process (all its threads): what the wall time would be on as many idle cores as it used
    report["cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    project.reports.mkdir(parents=True, exist_ok=True)
    (project.reports / "demo.json").write_text(json.dumps(report, indent=2, default=float))
    console.print(f"[bold green]demo done[/] in {report['seconds']:.0f} s — report: {project.reports / 'demo.json'}")
    return report


def _evaluate(project: Project, load_embedder, answers: dict[str, dict[str, str]]) -> dict:
    """Every stage on the test split; text and composed retrieval also with answer re-ranking on the gallery's
    cached answers (the base MLLM's, the same for every stage)."""
    from retrieval.evaluate import EvalConfig, evaluate_dataset

    out_file = project.reports / "eval.json"
    if out_file.exists():
        results = json.loads(out_file.read_text())
    else:
        results = {}
        for name, adapter in (("base", None), ("stage1", project.adapter("stage1")),
                              ("stage2", project.adapter("stage2"))):
            embedder = load_embedder(project.model, adapter=adapter)
            with progress_bar(f"evaluating {name}", total=None) as advance:
                results[name] = evaluate_dataset(embedder, project.world, ("t2i", "i2i", "composed"),
                                                 EvalConfig(answer_weight=ANSWER_WEIGHT), progress=advance,
                                                 answers=answers)
        project.reports.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(results, indent=2, default=float))
    for task in ("t2i", "t2i_answers", "i2i", "composed", "composed_answers"):
        title = TASK_TITLES[task] + (f" ({ANSWER_WEIGHT})" if task.endswith("_answers") else "")
        console.print(metrics_table(title, {name: results[name][task] for name in ("base", "stage1", "stage2")
                                            if task in results[name]}))
    return results


def _thi(project: Project, engine, records: list[PersonImage], cfg: DemoConfig) -> list[dict]:
    """Interactive THI on the indexed gallery, listening as `lineup chat` does (the engine's vocabulary): a
    simulated user answers from the ground-truth attributes, candidates are scored against the MLLM's own cached
    answers."""
    from finetune.data.world import QUESTION_BANK, answer_from_attributes
    from retrieval.thi import THIConfig, evaluate_thi

    out_file = project.reports / "thi.json"
    if out_file.exists():
        rounds = json.loads(out_file.read_text())
    else:
        queries = [{"text": r.captions[0], "person_id": r.person_id, "attributes": r.attributes}
                   for r in records[: cfg.thi_queries]]
        with progress_bar("THI dialogues", total=len(queries)) as advance:
            rounds = evaluate_thi(engine, queries, QUESTION_BANK, THIConfig(mode="interactive", rounds=cfg.thi_rounds),
                                  answerer_for=lambda q: lambda question: answer_from_attributes(q["attributes"],
                                                                                                question["key"]),
                                  progress=advance)
        out_file.write_text(json.dumps(rounds, indent=2))
    console.print(metrics_table("THI rounds (stage 2; simulated user, MLLM-cached answers)",
                                {f"round {m['round']}": {k: v for k, v in m.items() if k != "round"}
                                 for m in rounds}))
    return rounds


def _searches(project: Project, engine, records: list[PersonImage]) -> dict:
    from finetune.data import load_triplets

    query = records[0]
    text = query.captions[0]
    hits = engine.search_text(text, k=5)
    show_hits(hits, f"“{text}”  (wanted: person {query.person_id})")
    triplet = load_triplets(project.world, "test")[0]
    composed = engine.search_composed(triplet.reference, triplet.modification, k=5)
    show_hits(composed, f"person {triplet.reference_id} + “{triplet.modification}”  "
                        f"(wanted: person {triplet.target_id})")
    return {"text": {"query": text, "target": query.person_id, "top5": [h.payload["person_id"] for h in hits]},
            "composed": {"reference": triplet.reference_id, "modification": triplet.modification,
                         "target": triplet.target_id, "top5": [h.payload["person_id"] for h in composed]}}

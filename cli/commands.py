"""One function per subcommand: flags → library calls → rich output. Heavy imports stay inside each command."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from mllm_embed.errors import LineupError

from cli.project import Project
from cli.ui import console, contact_sheet, metrics_table, preview_strip, progress_bar


# ---------------------------------------------------------------- shared helpers

def _world(args, project: Project) -> Path:
    world = getattr(args, "world", None) or project.world
    if not (Path(world) / "world.json").exists():
        raise LineupError(f"{world}: no world here (world.json missing) — run `lineup world --out {world}` first")
    return Path(world)


def _base_model(args, project: Project) -> str:
    if args.model is None and not (project.model / "config.json").exists():
        raise LineupError(f"{project.model}: no base model — run `lineup bootstrap` or pass --model")
    return args.model or str(project.model)


def _embedder(args, project: Project):
    model = _base_model(args, project)
    from mllm_embed import load_embedder

    adapter = args.adapter
    if adapter is None:
        adapter = project.default_adapter() if args.model is None else None
    elif adapter == "none":
        adapter = None
    with console.status(f"loading {model}" + (f" + adapter {adapter}" if adapter else "")):
        return load_embedder(model, adapter=adapter, device=args.device, quantization=args.quantization,
                             prompt_style=args.prompt_style)


def _store(args, project: Project):
    from retrieval.store import open_store

    if args.qdrant_url:
        return open_store(url=args.qdrant_url)
    return open_store(path=args.qdrant_path or project.qdrant)


@contextlib.contextmanager
def _engine(args, project: Project) -> Iterator:
    """A SearchEngine whose store is closed (flushed, lock released) when the command ends."""
    embedder = _embedder(args, project)
    from retrieval.engine import SearchEngine

    with _store(args, project) as store:
        yield SearchEngine(embedder, store, args.collection)


def _parse_filters(items: list[str]) -> dict | None:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LineupError(f"--filter {item!r}: expected FIELD=VALUE, e.g. camera_id=3")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out or None


def show_hits(hits, title: str, preview: bool = True) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("#", "score", "person", "camera"):
        table.add_column(col, justify="right")
    table.add_column("image")
    for rank, hit in enumerate(hits, 1):
        p = hit.payload
        table.add_row(str(rank), f"{hit.score:.3f}", str(p.get("person_id", "?")), str(p.get("camera_id", "?")),
                      Path(p.get("image", "")).name)
    console.print(table)
    shown = [(i, h.payload["image"]) for i, h in enumerate(hits, 1) if Path(h.payload.get("image", "")).is_file()]
    if preview and shown:
        console.print(preview_strip([p for _, p in shown], [f"#{i}" for i, _ in shown]))


# ---------------------------------------------------------------- commands

def cmd_world(args, project: Project) -> int:
    from finetune.data.world import WorldConfig, generate_world

    out = args.out or project.world
    cfg = WorldConfig(identities=args.identities, images_per_id=args.images_per_id, seed=args.seed)
    with progress_bar("rendering world", total=None) as advance:
        generate_world(out, cfg, progress=advance)
    meta = json.loads((Path(out) / "world.json").read_text())
    counts = meta.get("counts", meta)
    console.print(metrics_table(f"world {out}", {"counts": {k: v for k, v in counts.items()
                                                            if isinstance(v, (int, float))}}))
    return 0


def cmd_bootstrap(args, project: Project) -> int:
    from finetune.stage0 import Stage0Config, pretrain
    from mllm_embed.tiny import build_tiny_base

    world = _world(args, project)
    out = args.out or project.model
    with console.status("training tokenizer and building the tiny base"):
        build_tiny_base(world, out, size=args.size)
    cfg = Stage0Config.for_tests() if args.size == "test" else Stage0Config()
    if args.epochs is not None:
        cfg.epochs = args.epochs
    with progress_bar("stage 0 pre-training", total=None) as advance:
        pretrain(out, world, cfg, progress=advance)
    show_stage0(Path(out))
    return 0


def show_stage0(model_dir: Path) -> None:
    done = json.loads((model_dir / "stage0_done.json").read_text())
    row = {"final loss": done["loss_curve"][-1], "steps": done["steps"], "seconds": done["seconds"]}
    if "val_vqa" in done:
        row["val VQA acc %"] = 100 * done["val_vqa"]["accuracy"]
    console.print(metrics_table(f"stage 0 — {model_dir}", {"base": row}))


def cmd_index(args, project: Project) -> int:
    from finetune.data.loaders import load_person_dataset

    with _engine(args, project) as engine:
        if args.images:
            records = _folder_records(args.images)
        else:
            ds = load_person_dataset(args.dataset or _world(args, project))
            records = [r for r in ds if args.split == "all" or r["split"] == args.split]
        if not records:
            raise LineupError(f"nothing to index: split {args.split!r} is empty — pick another with --split")
        with progress_bar(f"indexing into {args.collection!r}", total=len(records)) as advance:
            added = engine.index_images(records, batch_size=args.batch_size, progress=advance)
        if args.vqa_cache:
            from finetune.data.world import QUESTION_BANK

            with progress_bar("caching THI answers", total=len(records)) as advance:
                engine.cache_answers(QUESTION_BANK, progress=advance)
        console.print(f"indexed {added} new images; collection {args.collection!r} holds "
                      f"{engine.store.count(args.collection)}")
    return 0


def _folder_records(folder: Path) -> list[dict]:
    exts = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
    if not folder.is_dir():
        raise LineupError(f"--images {folder}: not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts)
    return [{"image": str(p.resolve()), "person_id": -1, "camera_id": -1, "split": "gallery"} for p in paths]


def cmd_search(args, project: Project) -> int:
    if not args.text and not args.image:
        raise LineupError("search needs --text, or --image (optionally with --modify)")
    if args.modify and not args.image:
        raise LineupError("--modify needs --image: the person to change")
    with _engine(args, project) as engine:
        filters = _parse_filters(args.filter)
        if args.image and args.modify:
            hits = engine.search_composed(args.image, args.modify, k=args.top_k, filter=filters)
            title = f"{args.image.name} + “{args.modify}”"
        elif args.image:
            hits = engine.search_image(args.image, k=args.top_k, filter=filters)
            title = f"like {args.image.name}"
        else:
            hits = engine.search_text(args.text, k=args.top_k, filter=filters)
            title = f"“{args.text}”"
        show_hits(hits, title, preview=not args.no_preview)
        if args.sheet:
            contact_sheet([h.payload["image"] for h in hits],
                          [f"#{i} id{h.payload.get('person_id')}" for i, h in enumerate(hits, 1)], args.sheet)
            console.print(f"contact sheet: {args.sheet}")
    return 0


def cmd_batch(args, project: Project) -> int:
    from retrieval.batch import run_batch

    with _engine(args, project) as engine:
        with progress_bar("batch queries", total=None) as advance:
            n = run_batch(engine, args.queries, args.out, k=args.top_k, progress=advance)
        console.print(f"{n} queries → {args.out}")
    return 0


def cmd_train(args, project: Project) -> int:
    from cli.main import TRAIN_EXPLICIT, dataclass_overrides
    from finetune.train import TrainConfig

    base = _base_model(args, project)
    init = args.adapter
    if init is None and args.stage == "stage2" and (project.adapter("stage1") / "lineup_embedder.json").exists():
        init = str(project.adapter("stage1"))
    try:
        cfg = TrainConfig(base_model=base, data=str(args.dataset or _world(args, project)),
                          output_dir=str(args.out or project.run(args.stage)), init_adapter=init,
                          quantization=args.quantization, prompt_style=args.prompt_style,
                          **dataclass_overrides(TrainConfig, args, TRAIN_EXPLICIT))
    except ValueError as err:
        raise LineupError(f"{err} — see `lineup train --help`") from None
    adapter = run_training(args.stage, cfg)
    console.print(f"adapter saved: {adapter}")
    return 0


def run_training(stage: str, cfg) -> Path:
    """train() with a rich progress bar (loss, samples/s) and an evaluation table after each epoch."""
    from finetune.train import train

    with progress_bar(f"training {stage}", total=None) as advance:
        def callback(event: dict) -> None:
            if event["event"] == "step":
                advance(1, total=event["total_steps"], info=f"epoch {event['epoch']} loss {event['loss']:.3f} "
                                f"{event['samples_per_s']:.1f} samples/s")
            elif event["event"] == "eval":
                metrics = " · ".join(f"{k} {v:.1f}" for k, v in event.items()
                                     if k not in ("event", "step", "epoch") and isinstance(v, float))
                console.print(f"[dim]{stage} epoch {event['epoch']} ({cfg.eval_split}):[/] {metrics}")

        return train(stage, cfg, callback=callback)


def cmd_caption(args, project: Project) -> int:
    from finetune.augment import caption_images

    records = _folder_records(args.images)
    if not records:
        raise LineupError(f"--images {args.images}: no .png/.jpg/.webp/.bmp images found")
    embedder = _embedder(args, project)
    images = [r["image"] for r in records]
    with progress_bar("TDE captioning", total=len(images)) as advance:
        captions = caption_images(embedder, images, per_image=args.per_image, progress=advance)
    _write_jsonl(args.out, [{"image": i, "captions": c} for i, c in zip(images, captions)])
    console.print(f"{len(images)} images captioned → {args.out}")
    return 0


def cmd_rewrite(args, project: Project) -> int:
    from finetune.augment import faithfulness_filter, rewrite_captions

    captions = _read_captions(args.captions)
    with progress_bar("LLM-DA rewriting", total=len(captions)) as advance:
        rewrites = rewrite_captions(args.rewriter, captions, progress=advance)
    embedder = _embedder(args, project)
    kept, cosine, report = faithfulness_filter(embedder, captions, rewrites,
                                               **({"threshold": args.threshold} if args.threshold is not None else {}))
    mapping: dict[str, list[str]] = {}
    for i in kept:
        mapping.setdefault(captions[i], []).append(rewrites[i])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(mapping, indent=1))
    audit = args.out.with_suffix(".tff.jsonl")
    _write_jsonl(audit, [{"original": c, "rewrite": r, "faithfulness": float(f), "kept": i in set(kept)}
                         for i, (c, r, f) in enumerate(zip(captions, rewrites, cosine))])
    console.print(metrics_table("text-faithfulness filter", {"rewrites": {
        "kept": report.kept, "dropped": report.dropped, "threshold": report.threshold}}))
    console.print(f"kept rewrites → {args.out} (use with `lineup train stage1 --rewrites {args.out}`); "
                  f"every rewrite with its score → {audit}")
    return 0


def _read_captions(path: Path) -> list[str]:
    from finetune.data.loaders import read_jsonl

    out = []
    for n, row in enumerate(read_jsonl(path, missing="pass a JSONL file of captions"), 1):
        value = row.get("captions", row.get("caption")) if isinstance(row, dict) else None
        if value is None:
            raise LineupError(f"{path}: row {n} has no 'caption' or 'captions' field")
        out += [value] if isinstance(value, str) else list(value)
    if not out:
        raise LineupError(f"{path}: no captions")
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def cmd_eval(args, project: Project) -> int:
    from retrieval.evaluate import TASKS, EvalConfig, evaluate_dataset

    path = args.dataset or _world(args, project)
    embedder = _embedder(args, project)
    tasks = TASKS if args.task == "all" else (args.task,)
    with progress_bar("evaluating", total=None) as advance:
        results = evaluate_dataset(embedder, path, tasks, EvalConfig(split=args.split, nam_layer=args.nam_layer),
                                   plots=args.plots, progress=advance)
    if args.thi != "off":
        results["thi"] = run_thi_eval(embedder, path, args.thi, args.thi_rounds)
    show_results(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return 0


def run_thi_eval(embedder, path: Path, mode: str, rounds: int) -> list[dict]:
    from finetune.data.world import QUESTION_BANK
    from retrieval.evaluate import evaluate_thi_dataset
    from retrieval.thi import THIConfig

    cfg = THIConfig(mode="auto" if mode == "auto" else "interactive", rounds=rounds)
    with progress_bar(f"THI {mode}", total=None) as advance:
        return evaluate_thi_dataset(embedder, path, QUESTION_BANK, cfg, progress=advance)


def show_results(results: dict) -> None:
    titles = {"t2i": "text → image", "i2i": "image → image (cross-camera)", "composed": "image + modification",
              "verify": "verification (same person?)", "noise": "NAM wrong-word detection"}
    for task, metrics in results.items():
        if task == "thi":
            console.print(metrics_table("THI rounds", {f"round {m['round']}": {k: v for k, v in m.items()
                                                                              if k != "round"} for m in metrics}))
        elif task == "verify":
            rows = {judge: m for judge, m in metrics.items() if isinstance(m, dict)}
            console.print(metrics_table(titles[task], rows or {"": metrics}))
        else:
            console.print(metrics_table(titles.get(task, task), {"": metrics}))


def cmd_chat(args, project: Project) -> int:
    from rich.prompt import Prompt

    from cli.chat import ChatSession, run_chat
    from finetune.data.world import QUESTION_BANK

    with _engine(args, project) as engine:
        session = ChatSession(engine, QUESTION_BANK, k=args.top_k)

        def show(step) -> None:
            show_hits(step.ranking[: args.top_k], step.label, preview=not args.no_preview)

        run_chat(session, read=lambda prompt: Prompt.ask(prompt.strip(), console=console), show=show,
                 say=console.print, transcript=args.transcript)
    return 0


def cmd_demo(args, project: Project) -> int:
    from cli.demo import DemoConfig, run_demo

    cfg = DemoConfig.fast() if args.fast else DemoConfig()
    if args.identities:
        cfg.identities = args.identities
    run_demo(project, cfg)
    return 0


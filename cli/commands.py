"""One function per subcommand: flags → library calls → rich output. Heavy imports stay inside each command."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mllm_embed.errors import LineupError
from mllm_embed.files import atomic_output, check_writable, write_text_atomic

from cli.project import Project
from cli.training import run_training, show_stage0
from cli.ui import TASK_TITLES, console, contact_sheet, metrics_table, progress_bar, show_hits

if TYPE_CHECKING:
    from finetune.data import PersonImage


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
    """Load the embedder; the model and adapter folders are checked first (one line, no hub retries)."""
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
    """The vector store, opened (and a server probed) before any model loads, so a wrong URL, port or folder
    is one line in a second, not a traceback after the model load."""
    from retrieval.store import check_collection_name, open_store

    check_collection_name(args.collection)
    if not args.qdrant_url:
        try:
            return open_store(path=args.qdrant_path or project.qdrant)
        except OSError as exc:
            raise LineupError(f"--qdrant-path {args.qdrant_path or project.qdrant}: cannot open the store there "
                              f"({exc.strerror or exc}); pick a writable folder") from None
    store = None
    try:
        with warnings.catch_warnings():  # qdrant-client's version-check warning: the probe below says it all
            warnings.simplefilter("ignore")
            store = open_store(url=args.qdrant_url)
            store.has_collection(args.collection)
    except LineupError:
        raise
    except Exception as exc:  # httpx/grpc connection errors, a bad port or scheme in the URL: all one answer
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()
        reason = (str(exc).strip().splitlines() or [""])[0][:160]
        raise LineupError(f"--qdrant-url {args.qdrant_url}: no Qdrant server answers there ({type(exc).__name__}"
                          f"{': ' + reason if reason else ''}); start the server, fix the URL, or drop "
                          "--qdrant-url to use the project's embedded store") from None
    return store


@contextlib.contextmanager
def _engine(args, project: Project) -> Iterator:
    """A SearchEngine whose store is closed (flushed, lock released) when the command ends."""
    from retrieval.engine import SearchEngine
    from retrieval.judge import world_vocabulary

    _base_model(args, project)  # a missing model is reported before the store folder is touched
    weight = getattr(args, "answer_weight", 0.0)
    with _store(args, project) as store:
        yield SearchEngine(_embedder(args, project), store, args.collection,
                           vocabulary=world_vocabulary() if weight else None, answer_weight=weight)


def _parse_filters(items: list[str]) -> dict | None:
    """--filter FIELD=VALUE flags as a store filter, checked against the stored payload fields (an unknown
    field is an error naming the valid ones, not an empty result)."""
    from retrieval.engine import FILTER_FIELDS, check_filter

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LineupError(f"--filter {item!r}: expected FIELD=VALUE, e.g. camera_id=3")
        if value.strip().startswith(("{", "[")):
            raise LineupError(f"--filter {item!r}: only one exact value matches (repeat --filter for more "
                              "fields); ranges are not supported")
        if FILTER_FIELDS.get(key) is int:
            if not value.strip().lstrip("-").isdigit():
                raise LineupError(f"--filter {item!r}: {key} is an integer, e.g. {key}=3")
            out[key] = int(value)
        else:
            out[key] = value
    return check_filter(out)


def _check_file(path: Path | None, role: str) -> None:
    if path is not None and not Path(path).is_file():
        raise LineupError(f"{role} {path}: no such file")


def _check_image(path: Path | None, role: str) -> None:
    """An image query must exist and decode (too large, truncated or not an image: one line, before the model)."""
    if path is not None:
        _check_file(path, role)
        from mllm_embed.embedder import load_image

        load_image(path)


def _check_new_folder(out: Path, force: bool, what: str, marker: str) -> None:
    """`out` must be new or empty; one that already holds a `what` (its `marker` file) is replaced only with
    --force, and a non-empty folder that is not one is never touched."""
    if out.exists() and not out.is_dir():
        raise LineupError(f"--out {out}: is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / marker).exists():
            raise LineupError(f"--out {out}: not empty and not a {what}; pick a new or empty folder")
        if not force:
            raise LineupError(f"--out {out}: already holds a {what}; pass --force to replace it, or pick a new "
                              "folder")
    check_writable(out / marker, "--out")


def _distinct(out: Path, inputs: dict[str, Path | None]) -> None:
    """An output must not be one of the command's inputs (it would be overwritten)."""
    for role, path in inputs.items():
        if path is not None and Path(out).resolve() == Path(path).resolve():
            raise LineupError(f"--out {out}: is the {role} input; write to another file")


# ---------------------------------------------------------------- commands

def cmd_world(args, project: Project) -> int:
    from finetune.data.world import WorldConfig, generate_world

    out = Path(args.out or project.world)
    try:
        cfg = WorldConfig(identities=args.identities, images_per_id=args.images_per_id, seed=args.seed)
    except ValueError as err:
        raise LineupError(f"{err} — see `lineup world --help`") from None
    _check_new_folder(out, args.force, "world", "world.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:  # render beside the target and swap it in whole: a failed run leaves the old folder as it was
        with progress_bar("rendering world", total=None) as advance:
            generate_world(tmp, cfg, progress=advance)
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads((Path(out) / "world.json").read_text())
    counts = meta.get("counts", meta)
    console.print(metrics_table(f"world {out}", {"counts": {k: v for k, v in counts.items()
                                                            if isinstance(v, (int, float))}}))
    return 0


def _replace_folder(new: Path, out: Path) -> None:
    """Move the finished folder `new` to `out`; a folder already at `out` is removed only after the swap."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def cmd_bootstrap(args, project: Project) -> int:
    from finetune.bootstrap import bootstrap_base, finished

    world = _world(args, project)
    out = Path(args.out or project.model)
    # a finished base is replaced only with --force; an unfinished one (no last-step marker yet) resumes
    if not (out / "config.json").exists() or finished(out):
        _check_new_folder(out, args.force, "model", "config.json")
        if args.force and out.exists():
            shutil.rmtree(out)
    with progress_bar("bootstrapping the base", total=None) as advance:
        bootstrap_base(world, out, size=args.size, stage0_epochs=args.epochs, vision_steps=args.vision_steps,
                       progress=lambda step, n: advance(n, info=step))
    show_stage0(Path(out))
    return 0


def cmd_index(args, project: Project) -> int:
    from finetune.data import load_split

    if args.images:
        records = _folder_records(args.images)
        if not records:
            raise LineupError(f"--images {args.images}: no .png/.jpg/.webp/.bmp images found")
    else:
        records = load_split(args.dataset or _world(args, project), args.split)
        if not records:
            raise LineupError(f"nothing to index: split {args.split!r} is empty — pick another with --split")
    if args.skipped_list:
        check_writable(args.skipped_list, "--skipped-list")
    skipped: list[tuple[str, str]] = []
    with _engine(args, project) as engine:
        with progress_bar(f"indexing into {args.collection!r}", total=len(records)) as advance:
            added = engine.index_images(records, batch_size=args.batch_size, progress=advance,
                                        on_skip=lambda image, reason: skipped.append((image, reason)))
        if args.vqa_cache:
            from finetune.data.world import QUESTION_BANK

            with progress_bar("caching THI answers", total=len(records)) as advance:
                engine.cache_answers(QUESTION_BANK, progress=advance)
        console.print(f"indexed {added} new images; collection {args.collection!r} holds "
                      f"{engine.store.count(args.collection)}")
    if skipped:
        _report_skipped(skipped, args.skipped_list)
    return 0


def _report_skipped(skipped: list[tuple[str, str]], listing: Path | None) -> None:
    """Unreadable images, at the end of an index run: the count, the first few names, and every one with its
    reason in --skipped-list. They were not stored, so the next run tries them again."""
    names = ", ".join(Path(image).name for image, _ in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
    line = f"[yellow]skipped {len(skipped)} unreadable image(s):[/] {names}"
    if listing:
        write_text_atomic(listing, "".join(f"{image}\t{reason}\n" for image, reason in skipped), "--skipped-list")
        line += f" — all of them with the reason in {listing}"
    else:
        line += " — pass --skipped-list FILE for every name and reason"
    console.print(line, highlight=False, soft_wrap=True)


def _folder_records(folder: Path) -> list[PersonImage]:
    from finetune.data import PersonImage

    exts = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
    if not folder.is_dir():
        raise LineupError(f"--images {folder}: not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts)
    return [PersonImage(image=str(p.resolve()), person_id=-1, camera_id=-1, split="gallery") for p in paths]


def cmd_search(args, project: Project) -> int:
    if not args.text and not args.image:
        raise LineupError("search needs --text, or --image (optionally with --modify)")
    if args.modify and not args.image:
        raise LineupError("--modify needs --image: the person to change")
    filters = _parse_filters(args.filter)
    _check_image(args.image, "--image")
    if args.sheet:
        check_writable(args.sheet, "--sheet")
    with _engine(args, project) as engine:
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
            with atomic_output(args.sheet, "--sheet") as tmp:
                contact_sheet([h.payload["image"] for h in hits],
                              [f"#{i} id{h.payload.get('person_id')}" for i, h in enumerate(hits, 1)], tmp)
            console.print(f"contact sheet: {args.sheet}")
    return 0


def cmd_batch(args, project: Project) -> int:
    from retrieval.batch import check_output, load_queries, run_batch

    check_output(args.queries, args.out)
    load_queries(args.queries, default_k=args.top_k)  # every line checked before the model loads
    with _engine(args, project) as engine:
        with progress_bar("batch queries", total=None) as advance:
            n = run_batch(engine, args.queries, args.out, k=args.top_k, progress=advance)
        console.print(f"{n} queries → {args.out}")
    return 0


def cmd_train(args, project: Project) -> int:
    """A recipe file (--config) if given, then every flag set on top of it, validated once."""
    from finetune.config import TrainConfig

    from cli.flags import TRAIN_EXPLICIT, config_overrides

    recipe = TrainConfig.from_recipe(args.config, args.stage) if args.config else TrainConfig()
    model = recipe.model
    init = args.adapter or model.init_adapter
    if init is None and args.stage == "stage2" and (project.adapter("stage1") / "lineup_embedder.json").exists():
        init = str(project.adapter("stage1"))
    if args.dataset or (recipe.batches.data and not args.world):
        data = str(args.dataset or recipe.batches.data)
    else:
        data = str(_world(args, project))
    explicit = {
        "base_model": model.base_model if args.model is None and model.base_model else _base_model(args, project),
        "data": data,
        "output_dir": str(args.out or recipe.run.output_dir or project.run(args.stage)),
        "init_adapter": init,
        "quantization": args.quantization or model.quantization,
        "prompt_style": args.prompt_style or model.prompt_style}
    cfg = recipe.with_overrides({**config_overrides(TrainConfig, args, TRAIN_EXPLICIT), **explicit})
    adapter = run_training(args.stage, cfg)
    console.print(f"adapter saved: {adapter}")
    return 0


def cmd_caption(args, project: Project) -> int:
    from finetune.augment import caption_images
    from finetune.data import write_jsonl

    records = _folder_records(args.images)
    if not records:
        raise LineupError(f"--images {args.images}: no .png/.jpg/.webp/.bmp images found")
    _distinct(args.out, {"--images": args.images})
    check_writable(args.out, "--out")
    embedder = _embedder(args, project)
    images = [r.image for r in records]
    with progress_bar("TDE captioning", total=len(images)) as advance:
        captions = caption_images(embedder, images, per_image=args.per_image, progress=advance)
    write_jsonl(args.out, [{"image": i, "captions": c} for i, c in zip(images, captions)], "--out")
    console.print(f"{len(images)} images captioned → {args.out}")
    return 0


def cmd_rewrite(args, project: Project) -> int:
    from finetune.augment import faithfulness_filter, rewrite_captions
    from finetune.data import write_jsonl

    captions = _read_captions(args.captions)
    audit = args.out.with_suffix(".tff.jsonl")
    _distinct(args.out, {"--captions": args.captions})
    if audit.resolve() == args.captions.resolve():
        raise LineupError(f"--out {args.out}: its audit file {audit} would overwrite --captions; pick another --out")
    check_writable(args.out, "--out")
    with progress_bar("LLM-DA rewriting", total=len(captions)) as advance:
        rewrites = rewrite_captions(args.rewriter, captions, progress=advance)
    embedder = _embedder(args, project)
    kept, cosine, report = faithfulness_filter(embedder, captions, rewrites,
                                               **({"threshold": args.threshold} if args.threshold is not None else {}))
    mapping: dict[str, list[str]] = {}
    for i in kept:
        mapping.setdefault(captions[i], []).append(rewrites[i])
    write_text_atomic(args.out, json.dumps(mapping, indent=1), "--out")
    write_jsonl(audit, [{"original": c, "rewrite": r, "faithfulness": float(f), "kept": i in set(kept)}
                        for i, (c, r, f) in enumerate(zip(captions, rewrites, cosine))], "--out")
    console.print(metrics_table("text-faithfulness filter", {"rewrites": {
        "kept": report.kept, "dropped": report.dropped, "threshold": report.threshold}}))
    console.print(f"kept rewrites → {args.out} (use with `lineup train stage1 --rewrites {args.out}`); "
                  f"every rewrite with its score → {audit}")
    return 0


def _read_captions(path: Path) -> list[str]:
    from finetune.data import read_jsonl

    out = []
    for n, row in enumerate(read_jsonl(path, missing="pass a JSONL file of captions"), 1):
        value = row.get("captions", row.get("caption")) if isinstance(row, dict) else None
        if value is None:
            raise LineupError(f"{path}: row {n} has no 'caption' or 'captions' field")
        out += [value] if isinstance(value, str) else list(value)
    if not out:
        raise LineupError(f"{path}: no captions")
    return out


def cmd_eval(args, project: Project) -> int:
    from finetune.data import load_split
    from retrieval.evaluate import TASKS, EvalConfig, evaluate_dataset

    path = args.dataset or _world(args, project)
    if args.json:
        check_writable(args.json, "--json")
    if args.plots:
        check_writable(args.plots / "roc.png", "--plots")
    embedder = _embedder(args, project)
    if args.task == "noise":  # NAM's wrong-word detection: a training-side evaluation (finetune.evaluate_nam)
        from finetune.evaluate_nam import evaluate_noise

        results = {"noise": evaluate_noise(embedder, load_split(path, args.split, required=True), args.nam_layer, path)}
    else:
        tasks = TASKS if args.task == "all" else (args.task,)
        with progress_bar("evaluating", total=None) as advance:
            results = evaluate_dataset(embedder, path, tasks, EvalConfig(split=args.split,
                                                                         answer_weight=args.answer_weight),
                                       plots=args.plots, progress=advance)
    if args.thi != "off":
        results["thi"] = run_thi_eval(embedder, path, args.thi, args.thi_rounds, args.thi_judge)
    show_results(results)
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2, default=float), "--json")
    return 0


def run_thi_eval(embedder, path: Path, mode: str, rounds: int, judge: str = "answers") -> list[dict]:
    from finetune.data.world import QUESTION_BANK
    from retrieval.evaluate import evaluate_thi_dataset
    from retrieval.thi import THIConfig

    cfg = THIConfig(mode="auto" if mode == "auto" else "interactive", rounds=rounds, judge=judge)
    with progress_bar(f"THI {mode}", total=None) as advance:
        return evaluate_thi_dataset(embedder, path, QUESTION_BANK, cfg, progress=advance)


def show_results(results: dict) -> None:
    for task, metrics in results.items():
        if task == "thi":
            console.print(metrics_table("THI rounds", {f"round {m['round']}": {k: v for k, v in m.items()
                                                                              if k != "round"} for m in metrics}))
        elif task == "verify":
            rows = {judge: m for judge, m in metrics.items() if isinstance(m, dict)}
            console.print(metrics_table(TASK_TITLES[task], rows or {"": metrics}))
        else:
            console.print(metrics_table(TASK_TITLES.get(task, task), {"": metrics}))


def cmd_chat(args, project: Project) -> int:
    import time

    from rich.prompt import Prompt

    from cli.chat import SCORE_NOTE, ChatSession, read_transcript, run_chat
    from finetune.data.world import QUESTION_BANK
    from retrieval.judge import world_vocabulary

    if args.resume:
        read_transcript(args.resume)  # a bad file fails before the model loads
    transcript = args.transcript or project.reports / "chat" / time.strftime("%Y%m%d-%H%M%S.txt", time.gmtime())
    check_writable(transcript, "--transcript")
    try:
        Path(transcript).parent.mkdir(parents=True, exist_ok=True)
        Path(transcript).touch()
    except OSError as err:
        raise LineupError(f"cannot write the transcript {transcript} ({err.strerror}): pass --transcript FILE") from err
    with _engine(args, project) as engine:
        count = engine.check()  # the collection and its adapter are checked before the first prompt
        if count == 0:
            raise LineupError(f"collection '{args.collection}' is empty: run `lineup index` first")
        first = next(iter(engine.store.scroll(args.collection, batch=1)), None)
        if first is not None and not first.payload.get("answers"):
            console.print("[yellow]no cached answers in this collection: questions cannot pick well — "
                          "run `lineup index --vqa-cache`[/]")
        session = ChatSession(engine, QUESTION_BANK, k=args.top_k, vocabulary=world_vocabulary())
        console.print(f"[dim]{count} images in '{args.collection}' · transcript {transcript} · {SCORE_NOTE}[/]",
                      highlight=False)

        def show(step) -> None:
            header = session.header()
            if header:
                console.print(f"[bold]{header}[/]", highlight=False)
            show_hits(step.ranking[: args.top_k], step.label, preview=not args.no_preview)

        run_chat(session, read=lambda prompt: Prompt.ask(prompt.strip(), console=console), show=show,
                 say=lambda text: console.print(text, highlight=False, markup=False), transcript=Path(transcript),
                 resume=args.resume)
    return 0


def cmd_demo(args, project: Project) -> int:
    from cli.demo import DemoConfig, run_demo

    cfg = DemoConfig.fast() if args.fast else DemoConfig()
    if args.identities:
        cfg.identities = args.identities
    cfg.base = args.base
    run_demo(project, cfg)
    return 0


"""`lineup`: the command line. Parses flags, hands them to the library, renders results with rich.

Errors a user can cause (LineupError) print as one red line and exit 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mllm_embed.errors import LineupError

from cli import commands
from cli.flags import TRAIN_EXPLICIT, add_config_args
from cli.project import Project
from cli.ui import console


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (a LineupError), like every other user error."""

    def error(self, message: str):
        raise LineupError(f"{message} — see `{self.prog} --help`")


def _at_least(low: int):
    """An argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


POSITIVE = _at_least(1)


def _top_k(text: str) -> int:
    from retrieval.engine import MAX_K

    value = POSITIVE(text)
    if value > MAX_K:
        raise argparse.ArgumentTypeError(f"{value} must be <= {MAX_K}")
    return value


def _add_project(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", type=Path, default=None,
                   help="project folder holding world/, model/, runs/ (training runs, each with its adapter/), "
                        "qdrant/, reports/ (default: ./lineup-project or $LINEUP_PROJECT)")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="base model: a folder or a hub name such as Qwen/Qwen2-VL-2B-Instruct (default: project model/)")
    p.add_argument("--adapter", default=None,
                   help="LoRA adapter folder (default: the project's stage2, else stage1 adapter; 'none' for the bare base)")
    p.add_argument("--quantization", choices=["4bit", "8bit"], default=None, help="load the base with bitsandbytes")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    from mllm_embed.config import PROMPT_STYLES

    p.add_argument("--prompt-style", choices=sorted(PROMPT_STYLES), default=None,
                   help="embedding prompt preset of a published embedder (README: Prompt styles); default: the "
                        "adapter's prompts, else lineup")


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", default="gallery",
                   help="Qdrant collection name (letters, digits, '_', '-', '.')")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--qdrant-path", type=Path, default=None,
                       help="embedded Qdrant (qdrant-edge) folder (default: project qdrant/)")
    where.add_argument("--qdrant-url", default=None, help="a Qdrant server URL instead of the embedded store")


def _add_answer_weight(p: argparse.ArgumentParser) -> None:
    from retrieval.judge import ANSWER_WEIGHT

    p.add_argument("--answer-weight", type=float, default=ANSWER_WEIGHT,
                   help="text and composed searches: weight of the evidence of the hits' cached answers (lineup "
                        "index --vqa-cache) for what the query states, added to the cosine (default "
                        f"{ANSWER_WEIGHT}); 0 ranks by cosine alone")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lineup",
        description="Composed and interactive person retrieval on an MLLM embedder, with Qdrant.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("world", help="render the synthetic person world (images + annotations)")
    p.set_defaults(run=commands.cmd_world)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: project world/)")
    p.add_argument("--identities", type=_at_least(3), default=200, help="number of base identities (>= 3)")
    p.add_argument("--images-per-id", type=POSITIVE, default=6, help="images per identity")
    p.add_argument("--seed", type=_at_least(0), default=0, help="random seed (same seed → identical world)")
    p.add_argument("--force", action="store_true", help="replace a world already in --out")
    _add_project(p)

    p = sub.add_parser("bootstrap", help="build the offline tiny base MLLM: local tokenizer + stage-0 pre-training")
    p.set_defaults(run=commands.cmd_bootstrap)
    p.add_argument("--world", type=Path, default=None, help="world folder (default: project world/)")
    p.add_argument("--out", type=Path, default=None, help="model folder (default: project model/)")
    p.add_argument("--size", choices=["test", "tiny", "small"], default="tiny", help="model size")
    p.add_argument("--epochs", type=POSITIVE, default=None, help="stage-0 epochs (default: the size's own)")
    p.add_argument("--vision-steps", type=POSITIVE, default=None,
                   help="vision pre-training steps (default: the size's own; finetune.bootstrap.recipe)")
    p.add_argument("--force", action="store_true", help="rebuild a model already in --out")
    _add_project(p)

    p = sub.add_parser("train", help="LoRA fine-tune: stage1 (image–text alignment) or stage2 (composed)")
    p.set_defaults(run=commands.cmd_train)
    p.add_argument("stage", choices=["stage1", "stage2"])
    _add_model(p)
    p.add_argument("--world", type=Path, default=None, help="world folder (default: project world/)")
    p.add_argument("--dataset", type=Path, default=None, help="a real dataset annotation file or folder instead")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder; the adapter goes to its adapter/ (default: project runs/STAGE)")
    p.add_argument("--config", type=Path, default=None,
                   help="a recipe file (YAML, e.g. recipes/demo-stage1.yaml); any flag overrides it")
    from finetune.config import TrainConfig

    add_config_args(p, TrainConfig, skip=TRAIN_EXPLICIT, title="training options (finetune.config.TrainConfig)")
    _add_project(p)

    p = sub.add_parser("caption", help="TDE: caption images with diverse templates by the MLLM")
    p.set_defaults(run=commands.cmd_caption)
    _add_model(p)
    p.add_argument("--images", type=Path, required=True, help="folder of images")
    p.add_argument("--out", type=Path, required=True, help="JSONL of {image, caption}")
    p.add_argument("--per-image", type=POSITIVE, default=2, help="captions per image")
    _add_project(p)

    p = sub.add_parser("rewrite", help="LLM-DA: rewrite captions with a causal LM, filtered by TFF")
    p.set_defaults(run=commands.cmd_rewrite)
    _add_model(p)
    p.add_argument("--rewriter", required=True, help="causal LM folder or hub name")
    p.add_argument("--captions", type=Path, required=True, help="JSONL with a 'caption' or 'captions' field")
    p.add_argument("--out", type=Path, required=True, help="JSONL of {original, rewrite, faithfulness, kept}")
    p.add_argument("--threshold", type=float, default=None, help="TFF cosine threshold")
    _add_project(p)

    p = sub.add_parser("index", help="embed gallery images and upsert them into Qdrant (resumable)")
    p.set_defaults(run=commands.cmd_index)
    _add_model(p)
    _add_store(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, help="a folder of images")
    src.add_argument("--dataset", type=Path, help="a world folder or real dataset annotation file")
    p.add_argument("--split", default="test", help="dataset split to index ('all' for every split)")
    p.add_argument("--batch-size", type=POSITIVE, default=16, help="images embedded per batch")
    p.add_argument("--skipped-list", type=Path, default=None,
                   help="write every unreadable image that was skipped, with the reason, to this file")
    p.add_argument("--vqa-cache", action="store_true",
                   help="also cache the MLLM's answers to the THI question bank in the payload (for `chat`)")
    _add_project(p)

    p = sub.add_parser("search", help="one query: text, image, or image + modification")
    p.set_defaults(run=commands.cmd_search)
    _add_model(p)
    _add_store(p)
    p.add_argument("--text", help="describe the person")
    p.add_argument("--image", type=Path, help="a photo of the person")
    p.add_argument("--modify", help="with --image: how the wanted person differs")
    p.add_argument("-k", "--top-k", type=_top_k, default=10)
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help="payload filter, e.g. camera_id=3 (repeatable)")
    p.add_argument("--no-preview", action="store_true", help="no half-block image previews")
    p.add_argument("--sheet", type=Path, help="save a contact sheet PNG of the results")
    _add_answer_weight(p)
    _add_project(p)

    p = sub.add_parser("chat", help="interactive search session with THI questions, composed steps and undo")
    p.set_defaults(run=commands.cmd_chat)
    _add_model(p)
    _add_store(p)
    p.add_argument("-k", "--top-k", type=_top_k, default=5)
    p.add_argument("--transcript", type=Path,
                   help="write the session transcript here (default: project reports/chat/<time>.txt)")
    p.add_argument("--resume", type=Path, help="replay a transcript's inputs to its ranking, then go on")
    p.add_argument("--no-preview", action="store_true")
    _add_answer_weight(p)
    _add_project(p)

    p = sub.add_parser("batch", help="run a JSONL/CSV/parquet file of queries, write ranked results")
    p.set_defaults(run=commands.cmd_batch)
    _add_model(p)
    _add_store(p)
    p.add_argument("--queries", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("-k", "--top-k", type=_top_k, default=10, help="results per query without its own k")
    _add_answer_weight(p)
    _add_project(p)

    p = sub.add_parser("eval", help="Rank-1/5/10, mAP, mINP, composed Recall@K, verification, THI rounds")
    p.set_defaults(run=commands.cmd_eval)
    _add_model(p)
    p.add_argument("--world", type=Path, default=None, help="world folder (default: project world/)")
    p.add_argument("--dataset", type=Path, default=None, help="a real dataset instead")
    p.add_argument("--task", choices=["t2i", "i2i", "composed", "verify", "noise", "all"], default="all",
                   help="all: every task but noise (NAM's wrong-word detection AUC; synthetic worlds only)")
    p.add_argument("--nam-layer", type=int, default=-1, help="with --task noise: the hidden layer NAM compares")
    p.add_argument("--split", default="test",
                   help="split to evaluate (CIRR / FashionIQ: 'test' means val, their test targets are hidden)")
    p.add_argument("--thi", choices=["off", "auto", "simulated"], default="off", help="THI evaluation mode")
    p.add_argument("--thi-rounds", type=POSITIVE, default=3)
    p.add_argument("--thi-judge", choices=["answers", "question"], default="answers",
                   help="with --thi auto: judge a candidate by its answers to the question bank against what the "
                        "query states, or by the MLLM's one yes/no to match_question")
    p.add_argument("--plots", type=Path, help="with --task verify: folder for ROC and histogram PNGs")
    p.add_argument("--answer-weight", type=float, default=0.0,
                   help="also report text and composed retrieval re-ranked at this weight, as lineup search ranks "
                        "(0.3): asks the MLLM the 16 bank questions about every gallery image first")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    _add_project(p)

    p = sub.add_parser("demo", help="the offline demo: world → bootstrap → stage1 → stage2 → index → eval → search")
    p.set_defaults(run=commands.cmd_demo)
    p.add_argument("--identities", type=_at_least(3), default=None, help="world size (default: the demo's)")
    p.add_argument("--fast", action="store_true", help="a much smaller demo (minutes), for smoke tests")
    p.add_argument("--base", default=None, help="a finished base (`lineup bootstrap --out`) to use instead of the "
                                                "shipped one")
    _add_project(p)
    return parser


def _quiet_library_progress() -> None:
    """Lineup draws its own rich progress; the libraries' tqdm bars would interleave with it."""
    import warnings

    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    transformers.utils.logging.disable_progress_bar()


def _fail(err: LineupError) -> int:
    console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except LineupError as err:
        return _fail(err)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    _quiet_library_progress()
    project = Project(args.project) if getattr(args, "project", None) else Project()
    try:
        return args.run(args, project) or 0
    except LineupError as err:
        return _fail(err)
    except Exception as exc:  # a fault no check foresaw: still one line; -v shows the traceback
        if args.verbose:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        console.print(f"[bold red]unexpected error:[/] {type(exc).__name__}: {first} — rerun with -v for the "
                      "traceback", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/] — run the same command again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Stage 0: generative pre-training of the offline base so it sees and speaks before the LoRA stages.

Full parameters, language-model loss on the answer tokens only, over captioning ("Describe the person."
-> caption), VQA pairs and yes/no judgements (does a caption describe the image: `match_question`; are two
crops side by side the same person: `verify_question`) of the world's train split. Writes `stage0_done.json`
(loss curve, VQA and judge accuracy on the val split) and saves the weights back into the model folder with
`save_pretrained`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import asdict
from pathlib import Path

import torch

from finetune.data import PersonImage, load_split, load_vqa, words
from finetune.config import Stage0Config
from finetune.loop import LoopSettings, accelerator_for, epoch_losses, fit, load_tensors, save_tensors
from mllm_embed import load_embedder
from mllm_embed.embedder import head_view, load_image, side_by_side, train_mode
from mllm_embed.errors import LineupError

logger = logging.getLogger(__name__)

DONE_FILE = "stage0_done.json"
WEIGHTS_FILE = "trained.safetensors"  # a stage-0 checkpoint's trained parameters
RUN_DIR = "stage0_run"  # inside the model folder: metrics.jsonl and the checkpoints of an unfinished run


def _pairs(world_dir: Path, split: str, cfg: Stage0Config) -> tuple[list[tuple], list[tuple]]:
    """(image, question, answer, attribute) VQA pairs and (image, caption) pairs of one split."""
    qa = [(r.image, r.question, r.answer, r.attribute) for r in load_vqa(world_dir, split)
          if not cfg.attributes or r.attribute in cfg.attributes]
    captions = [(r.image, c) for r in load_split(world_dir, split) for c in r.captions[: cfg.captions_per_image]]
    return qa, captions


def _draw(qa: list[tuple], per_image: int, rng: random.Random) -> list[tuple]:
    """At most `per_image` random VQA pairs of each image (all when per_image is 0)."""
    if not per_image:
        return list(qa)
    by_image: dict[str, list[tuple]] = defaultdict(list)
    for pair in qa:
        by_image[pair[0]].append(pair)
    return [p for pairs in by_image.values() for p in rng.sample(pairs, min(per_image, len(pairs)))]


# words also said in "no hat or glasses" / "no bag": never evidence that a caption names a value
_NEGATABLE = {"hat", "glasses", "bag"}


def _foreign_words(attrs: dict) -> set[str]:
    """Value words naming a value this person lacks (and no value it has): a caption using one is false."""
    from finetune.data.world import ATTRIBUTES, value_words

    own = {w for k, v in attrs.items() for w in value_words(k, v)}
    other = {w for k, values in ATTRIBUTES.items() for v in values if v != attrs.get(k) for w in value_words(k, v)}
    return other - own - _NEGATABLE


def _differences(a: dict, b: dict) -> int:
    """Attributes two identities differ in (a bag and its colour count once, as in one edit)."""
    keys = {k for k in a if a[k] != b.get(k)}
    return len(keys) - ({"bag", "bag_color"} <= keys)


def split_people(world_dir: Path, split: str) -> list[PersonImage]:
    """One split's images that have attributes, for judgement pairs."""
    return [r for r in load_split(world_dir, split) if r.attributes]


def _said(kind: str) -> str:
    return "yes" if kind == "yes" else "no"


class Judgements:
    """Balanced yes/no judgement pairs over one split's images, shaped like the VQA pairs:
    (image | (image, image) shown side by side, question, "yes" | "no", kind), kind in
    {"yes", "no hard", "no random"}; half the pairs are yes, half of the no's hard."""

    _KINDS = ("yes", "no hard", "yes", "no random")

    def __init__(self, people: list[PersonImage], config):
        self.people = people
        self.match_prompt, self.verify_question = config.match_prompt, config.verify_question
        self.by_pid: dict[int, list[PersonImage]] = defaultdict(list)
        for person in people:
            self.by_pid[person.person_id].append(person)
        attrs = {pid: images[0].attributes for pid, images in self.by_pid.items()}
        self.foreign = {pid: _foreign_words(a) for pid, a in attrs.items()}
        # one-edit neighbours (hard text negatives); family members or same gender + upper colour (hard pairs)
        self.neighbours = {p: [q for q in attrs if q != p and _differences(a, attrs[q]) == 1] for p, a in attrs.items()}
        self.lookalikes = {p: [q for q in attrs if q != p and (_differences(a, attrs[q]) <= 2 or all(
            a[k] == attrs[q][k] for k in ("gender", "upper_color")))] for p, a in attrs.items()}

    def _sample(self, n: int, rng: random.Random) -> list[PersonImage]:
        """n images, every image once before any twice."""
        out: list[PersonImage] = []
        while self.people and len(out) < n:
            out += rng.sample(self.people, len(self.people))
        return out[:n]

    def _other(self, pid: int, rng: random.Random) -> int:
        return rng.choice([q for q in self.by_pid if q != pid])

    def _false_caption(self, person: PersonImage, pids: list[int], rng: random.Random) -> str | None:
        """A caption of an image of one of `pids` that names a value `person` lacks (None if none is found)."""
        for _ in range(8 if pids else 0):
            caption = rng.choice(rng.choice(self.by_pid[rng.choice(pids)]).captions)
            if set(words(caption)) & self.foreign[person.person_id]:
                return caption
        return None

    def match(self, n: int, rng: random.Random) -> list[tuple]:
        """Text-image pairs: the image with its own caption (yes); with its noisy caption or a one-edit
        neighbour's caption (no, hard); with a random other identity's caption (no)."""
        out = []
        for i, person in enumerate(self._sample(n, rng)):
            kind, pid, caption = self._KINDS[i % 4], person.person_id, None
            if kind == "yes":
                caption = rng.choice(person.captions)
            if kind == "no hard":
                noisy = person.noisy_caption if person.noisy_words else None  # it names a wrong value
                options = [noisy, self._false_caption(person, self.neighbours[pid], rng)]
                options = [c for c in options if c]
                caption = rng.choice(options) if options else None
                kind = kind if caption else "no random"
            if caption is None and len(self.by_pid) > 1:
                caption = self._false_caption(person, [self._other(pid, rng) for _ in range(8)], rng)
            if caption:
                out.append((person.image, self.match_prompt(caption), _said(kind), kind))
        return out

    def same(self, n: int, rng: random.Random) -> list[tuple]:
        """Crop pairs: another camera of the same identity (yes); a family member / neighbour or someone of the
        same gender and upper colour (no, hard); a random other identity (no)."""
        out = []
        for i, person in enumerate(self._sample(n, rng)):
            kind, pid = self._KINDS[i % 4], person.person_id
            if kind == "yes":
                mine = [p for p in self.by_pid[pid] if p is not person]
                options = [p for p in mine if p.camera_id != person.camera_id] or mine
            elif len(self.by_pid) < 2:
                continue
            else:
                hard = self.lookalikes[pid] if kind == "no hard" else []
                kind = kind if hard else "no random"
                options = self.by_pid[rng.choice(hard) if hard else self._other(pid, rng)]
            if options:
                pair = (person.image, rng.choice(options).image)
                out.append((pair if rng.random() < 0.5 else pair[::-1], self.verify_question, _said(kind), kind))
        return out


def judge_accuracy(embedder, pairs: list[tuple]) -> dict:
    """Balanced accuracy (mean recall of yes and of no) of `embedder.answer` on `Judgements` pairs; an answer
    starting with "yes" says yes."""
    by_answer: dict[str, list[int]] = defaultdict(list)
    by_kind: dict[str, list[int]] = defaultdict(list)
    said_yes = 0
    for image, question, answer, kind in pairs:
        shown = side_by_side(*image) if isinstance(image, tuple) else image
        yes = embedder.answer(shown, question).startswith("yes")
        said_yes += yes
        by_answer[answer].append(int(yes == (answer == "yes")))
        by_kind[kind].append(int(yes == (answer == "yes")))
    recall = [sum(v) / len(v) for v in by_answer.values()]
    return {"balanced_accuracy": sum(recall) / max(1, len(recall)), "n": len(pairs),
            "yes_rate": said_yes / max(1, len(pairs)),
            "by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}}


def vqa_accuracy(embedder, pairs: list[tuple], images: dict | None = None) -> dict:
    """Exact-match accuracy of `embedder.answer` over (image, question, answer, attribute) pairs."""
    hits: dict[str, list[int]] = defaultdict(list)
    for image, question, answer, attribute in pairs:
        img = images[image] if images else image
        hits[attribute].append(int(embedder.answer(img, question) == answer.strip().lower()))
    everything = [h for values in hits.values() for h in values]
    return {"accuracy": sum(everything) / max(1, len(everything)), "n": len(everything),
            "by_attribute": {k: sum(v) / len(v) for k, v in sorted(hits.items())}}


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup_steps`, then cosine decay to 0 at `total_steps` (stage 0, vision pre-training)."""

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


class LanguageModelling:
    """Stage 0 as a `finetune.loop.Objective`: the LM loss on answer tokens over VQA + captioning batches and
    yes/no judgement batches. An epoch's batches are a pure function of (seed, epoch); their number is counted
    from the pair counts, a judgement shortfall (no false caption or second crop found) refilled by repeating
    the epoch's first batches."""

    def __init__(self, embedder, cfg: Stage0Config, qa: list[tuple], captions: list[tuple], judge: Judgements,
                 head: Collection[str] = ()):
        self.embedder, self.cfg, self.qa, self.captions, self.judge = embedder, cfg, qa, captions, judge
        self.head = frozenset(head)  # VQA attributes asked about the image's head view
        self.n_match, self.n_same = (round(rate * len(judge.people)) for rate in (cfg.match_pairs, cfg.same_pairs))
        self.images = {path: load_image(path) for path in
                       {p[0] for p in qa} | {c[0] for c in captions} | {p.image for p in judge.people}}
        per_image = defaultdict(int)
        for pair in qa:
            per_image[pair[0]] += 1
        drawn = sum(min(n, cfg.questions_per_image) for n in per_image.values()) if cfg.questions_per_image else len(qa)
        n_with_image = drawn + int(len(captions) * cfg.caption_weight)
        self.steps_per_epoch = -(-n_with_image // cfg.batch_size) + -(-(self.n_match + self.n_same) // cfg.batch_size)
        model = embedder.model
        if not cfg.train_vision:
            model.model.vision_tower.requires_grad_(False)
        train_mode(model)
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self._plan: tuple[int, list] | None = None

    def _pixels(self, image, head: bool):
        """A loaded image (its head view where `head`), or two shown side by side."""
        if isinstance(image, tuple):
            return side_by_side(self.images[image[0]], self.images[image[1]])
        return head_view(self.images[image]) if head else self.images[image]

    def plan(self, epoch: int) -> list[list[tuple]]:
        """The epoch's batches of (image path or pair of paths, head view?, question, answer): VQA + captioning
        batches and judgement batches (long prompts, batched apart so they do not pad the short VQA prompts), in
        random order. `batch` renders the pixels, so an epoch's plan holds no crops."""
        cfg, rng = self.cfg, random.Random(f"stage0:{self.cfg.seed}:{epoch}")
        kept = rng.sample(self.captions, int(len(self.captions) * cfg.caption_weight))
        with_image = [(i, attribute in self.head, q, a)
                      for i, q, a, attribute in _draw(self.qa, cfg.questions_per_image, rng)]
        with_image += [(i, False, self.embedder.config.caption_question, c) for i, c in kept]
        judged = [(i, False, q, a) for i, q, a, _ in
                  self.judge.match(self.n_match, rng) + self.judge.same(self.n_same, rng)]
        batches = []
        for items in (with_image, judged):
            rng.shuffle(items)
            batches += [items[s:s + cfg.batch_size] for s in range(0, len(items), cfg.batch_size)]
        rng.shuffle(batches)
        return [batches[i % len(batches)] for i in range(self.steps_per_epoch)]

    def optimizer(self):
        return torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def scheduler(self, optimizer, total_steps: int):
        return warmup_cosine(optimizer, self.cfg.warmup_steps, total_steps)

    def begin_epoch(self, epoch: int, resumed: bool) -> None:
        self._plan = (epoch, self.plan(epoch))

    def batch(self, epoch: int, position: int) -> tuple[str, list]:
        return "stage0", [(self._pixels(image, head), q, a) for image, head, q, a in self._plan[1][position]]

    def loss(self, batch, epoch: int, position: int) -> dict[str, torch.Tensor]:
        return {"lm": self.embedder.lm_loss(self.embedder.lm_batch(batch[1]))}

    def log(self) -> dict:
        return {}

    def evaluate(self, epoch: int) -> None:
        return None  # stage 0 is evaluated once, after training

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def save_weights(self, folder: Path) -> None:
        save_tensors(dict(self.named), folder, WEIGHTS_FILE)

    def load_weights(self, folder: Path) -> None:
        def copy(weights: dict) -> None:
            with torch.no_grad():
                for n, p in self.named:
                    p.copy_(weights[n])

        load_tensors(folder, WEIGHTS_FILE, copy)


def pretrain(model_dir: str | Path, world_dir: str | Path, cfg: Stage0Config | None = None,
             progress: Callable[[int], None] | None = None) -> Path:
    """Full-parameter LM training of the base in `model_dir` on the world's train split; saves in place. With
    `cfg.save_every` it checkpoints into `model_dir/stage0_run/` and (`cfg.resume`) continues a killed run
    exactly; the run folder is removed once the weights are saved."""
    cfg = cfg or Stage0Config()
    model_dir, world_dir = Path(model_dir), Path(world_dir)
    if not (world_dir / "annotations.jsonl").exists():
        raise LineupError(f"{world_dir}: no annotations.jsonl; generate a world first (lineup world --out {world_dir})")
    started = time.time()
    torch.manual_seed(cfg.seed)
    embedder = load_embedder(model_dir, dtype="fp32")
    qa, captions = _pairs(world_dir, "train", cfg)
    if not qa and not captions:
        raise LineupError(f"{world_dir}: the train split has no VQA or caption pairs")
    objective = LanguageModelling(embedder, cfg, qa, captions, Judgements(split_people(world_dir, "train"),
                                                                         embedder.config))
    run = model_dir / RUN_DIR
    settings = LoopSettings(epochs=cfg.epochs, max_grad_norm=cfg.max_grad_norm, save_every=cfg.save_every,
                            resume=cfg.resume)
    steps = fit(objective, settings, run, accelerator_for("no"), name="stage 0",
                callback=progress and (lambda row: row["event"] == "step" and progress(1)))
    curve = epoch_losses(run)
    embedder.model.eval()
    embedder.model.save_pretrained(model_dir)
    shutil.rmtree(run)  # the loss curve goes into DONE_FILE; a finished base folder holds only the model

    result = {"loss_curve": curve, "steps": steps,
              "train_pairs": {"vqa": len(qa), "captions": len(captions),
                              "match_per_epoch": objective.n_match, "same_person_per_epoch": objective.n_same},
              "seconds": round(time.time() - started, 1), "config": asdict(cfg)}
    rng = random.Random(cfg.seed)
    if cfg.eval_questions:
        val, _ = _pairs(world_dir, "val", cfg)
        rng.shuffle(val)
        result["val_vqa"] = vqa_accuracy(embedder, val[: cfg.eval_questions])
        logger.info("stage 0 val VQA accuracy %.3f", result["val_vqa"]["accuracy"])
    val_judge = Judgements(split_people(world_dir, "val"), embedder.config) if cfg.eval_judgements else None
    if val_judge and val_judge.people:
        result["val_match"] = judge_accuracy(embedder, val_judge.match(cfg.eval_judgements, rng))
        result["val_same_person"] = judge_accuracy(embedder, val_judge.same(cfg.eval_judgements, rng))
        logger.info("stage 0 val judges (balanced accuracy): match %.3f, same person %.3f",
                    result["val_match"]["balanced_accuracy"], result["val_same_person"]["balanced_accuracy"])
    (model_dir / DONE_FILE).write_text(json.dumps(result, indent=2))
    return model_dir

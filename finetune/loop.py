"""The one training loop of stage 0, stage 1 and stage 2: the stage plugs in as an `Objective`.

accelerate prepares the optimizer and runs backward (mixed precision), clipping and the step; the loop owns the
schedule, checkpoints (objective weights + optimizer, scheduler, objective state, RNG), exact resume and
metrics.jsonl. An epoch's batches are a pure function of (seed, epoch), and its length is counted without
building it, so a resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from finetune.data import append_jsonl, read_jsonl, write_jsonl
from mllm_embed.errors import LineupError
from mllm_embed.files import atomic_output

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
Callback = Callable[[dict], None] | None


class Objective(Protocol):
    """What a stage plugs into `fit`. A batch is (kind, items): `kind` is logged with the step."""

    params: list[torch.Tensor]  # the trained parameters (optimised, clipped, gradient-synced)
    steps_per_epoch: int  # batches in an epoch over all processes, counted without drawing them

    def optimizer(self) -> torch.optim.Optimizer: ...

    def scheduler(self, optimizer, total_steps: int): ...

    def begin_epoch(self, epoch: int, resumed: bool) -> None:
        """Before an epoch's first step; `resumed`: the epoch restarts mid-way from a checkpoint."""

    def batch(self, epoch: int, position: int) -> tuple[str, Any]:
        """The batch at `position` of the epoch's plan."""

    def loss(self, batch: tuple[str, Any], epoch: int, position: int) -> dict[str, torch.Tensor]:
        """The batch's weighted loss terms by name: their sum is optimised, each is logged."""

    def log(self) -> dict:
        """Extra fields of each step's metrics row."""

    def evaluate(self, epoch: int) -> dict | None:
        """Metrics after an epoch (None: no evaluation)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def save_weights(self, folder: Path) -> None:
        """The trained weights of a checkpoint."""

    def load_weights(self, folder: Path) -> None: ...


@dataclass(frozen=True)
class LoopSettings:
    """The loop's share of a stage's config."""

    epochs: int
    max_steps: int = 0  # 0: no limit
    max_grad_norm: float = 1.0  # 0: no clipping
    precision: str = "no"
    save_every: int = 0  # 0: no checkpoints but the final weights
    keep_checkpoints: int = 2  # 0: keep all
    resume: bool = False


def epoch_losses(out: Path) -> list[float]:
    """The mean step loss of each epoch of the `fit` run in `out` (its metrics.jsonl), in epoch order."""
    by_epoch: dict[int, list[float]] = {}
    for row in read_jsonl(out / METRICS_FILE):
        by_epoch.setdefault(row["epoch"], []).append(row["loss"])
    return [sum(v) / len(v) for _, v in sorted(by_epoch.items())]


def checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if (p / STATE_FILE).exists() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def damaged(ckpt: Path, what: str, exc: BaseException) -> LineupError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return LineupError(f"{ckpt}: {what} cannot be loaded ({type(exc).__name__}: {first}); delete that checkpoint "
                       "folder to resume from an older one, or train without --resume")


def save_tensors(tensors: dict[str, torch.Tensor], folder: Path, name: str) -> None:
    """A checkpoint file of named tensors (safetensors: loading it runs no code)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(folder / name))


def load_tensors(folder: Path, name: str, apply: Callable[[dict[str, torch.Tensor]], Any]) -> None:
    """Read a checkpoint file of named tensors and `apply` them; a missing, damaged or mismatching file is one
    line (`damaged`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        apply(load_file(str(folder / name)))
    except (OSError, SafetensorError, KeyError, RuntimeError) as exc:
        raise damaged(folder, name, exc) from None


def _load_state(ckpt: Path) -> dict:
    """The trainer state, unpickled with torch's weights-only loader: tensors, numbers, strings and containers,
    never objects or calls, so a planted checkpoint cannot run code."""
    try:
        state = torch.load(ckpt / STATE_FILE, weights_only=True, map_location="cpu")
    except Exception as exc:  # UnpicklingError for a forbidden global, EOFError/RuntimeError for a damaged file
        raise damaged(ckpt, STATE_FILE, exc) from None
    needed = {"step", "optimizer", "scheduler", "objective", "rng"}
    missing = needed - set(state) if isinstance(state, dict) else needed
    if missing:
        raise damaged(ckpt, STATE_FILE, ValueError(f"fields {sorted(missing)} missing"))
    return state


def _save_checkpoint(out: Path, step: int, objective: Objective, state: dict, keep: int) -> None:
    ckpt = out / f"checkpoint-{step}"
    ckpt.mkdir(parents=True, exist_ok=True)
    objective.save_weights(ckpt)
    with atomic_output(ckpt / STATE_FILE, "checkpoint") as tmp:  # written last and whole: it marks a checkpoint done
        torch.save(state, tmp)
    for old in checkpoints(out)[:-keep] if keep > 0 else []:
        for f in sorted(old.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        old.rmdir()


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def accelerator_for(precision: str):
    from accelerate import Accelerator

    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def fit(objective: Objective, settings: LoopSettings, out: Path, accelerator, callback: Callback = None,
        name: str = "training") -> int:
    """Run the objective's epochs; returns the steps taken. Writes `out/metrics.jsonl` (one row per step and per
    evaluation) and, every `save_every` steps, `out/checkpoint-N`. `callback(row)` gets every row:
    {"event": "step", "step", "total_steps", "epoch", "kind", "loss", "terms", "lr", "samples_per_s", ...} and
    {"event": "eval", "step", "epoch", ...metrics}."""
    n_proc = accelerator.num_processes
    steps_per_epoch = objective.steps_per_epoch // n_proc
    if steps_per_epoch < 1:
        raise LineupError(f"{name}: {objective.steps_per_epoch} batches per epoch for {n_proc} processes; use "
                          "smaller batches (--ids-per-batch, --batch-size) or fewer processes")
    total = steps_per_epoch * settings.epochs
    total = min(total, settings.max_steps) if settings.max_steps else total
    optimizer = objective.optimizer()
    scheduler = objective.scheduler(optimizer, total)
    optimizer = accelerator.prepare(optimizer)  # the scheduler counts our steps, not accelerate's

    out.mkdir(parents=True, exist_ok=True)
    step, metrics_path = 0, out / METRICS_FILE
    found = checkpoints(out) if settings.resume else []
    if found:
        ckpt = found[-1]
        state = _load_state(ckpt)
        objective.load_weights(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        objective.load_state_dict(state["objective"])
        _set_rng_state(state["rng"])
        step = state["step"]
        if metrics_path.exists():  # drop what the killed run logged after its last checkpoint
            write_jsonl(metrics_path, [r for r in read_jsonl(metrics_path) if r["step"] <= step], "metrics")
        logger.info("resumed %s from %s (step %d)", name, ckpt, step)
    elif metrics_path.exists():
        metrics_path.unlink()

    def save(step: int) -> None:
        if accelerator.is_main_process:
            state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "objective": objective.state_dict(), "rng": _rng_state()}
            _save_checkpoint(out, step, objective, state, settings.keep_checkpoints)
        accelerator.wait_for_everyone()

    start_epoch, skip = divmod(step, steps_per_epoch)
    busy, samples = 0.0, 0  # seconds spent in training steps (evaluation excluded), samples seen
    for epoch in range(start_epoch, settings.epochs):
        if step >= total:
            break
        objective.begin_epoch(epoch, resumed=epoch == start_epoch and skip > 0)
        for s in range(skip if epoch == start_epoch else 0, steps_per_epoch):
            if step >= total:
                break
            pos = s * n_proc + accelerator.process_index  # each process takes its own batch of the plan
            batch = objective.batch(epoch, pos)
            t0 = time.perf_counter()
            with accelerator.autocast():
                terms = objective.loss(batch, epoch, pos)
                loss = sum(terms.values())
            accelerator.backward(loss)
            if n_proc > 1:  # the embedder's forward bypasses a DDP wrapper: average the gradients here
                for p in objective.params:
                    p.grad = accelerator.reduce(p.grad if p.grad is not None else torch.zeros_like(p), "mean")
            if settings.max_grad_norm:
                accelerator.clip_grad_norm_(objective.params, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            samples += len(batch[1]) * n_proc  # a batch is (kind, items)
            busy += time.perf_counter() - t0
            row = {"event": "step", "step": step, "total_steps": total, "epoch": epoch, "kind": batch[0],
                   "loss": float(loss.detach()), "terms": {k: float(v.detach()) for k, v in terms.items()},
                   "lr": scheduler.get_last_lr()[0], **objective.log(),
                   "samples_per_s": samples / max(busy, 1e-9)}
            if accelerator.is_main_process:
                append_jsonl(metrics_path, row)
                if callback:
                    callback(row)
            if (s == steps_per_epoch - 1 or step >= total) and accelerator.is_main_process:
                metrics = objective.evaluate(epoch)
                if metrics is not None:
                    row = {"event": "eval", "step": step, "epoch": epoch, **metrics}
                    append_jsonl(metrics_path, row)
                    logger.info("%s epoch %d eval: %s", name, epoch, metrics)
                    if callback:
                        callback(row)
            if settings.save_every and step % settings.save_every == 0:
                save(step)
    return step

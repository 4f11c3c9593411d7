"""GPU check: bf16 embedding throughput vs a bare forward loop, a stage-1 step (sdpa; gradient checkpointing),
QLoRA 4-bit, peak memory.

    python benchmarks/gpu_check.py --model MODEL_DIR                 # on a CUDA machine (bf16, batch 64)
    OMP_NUM_THREADS=1 python benchmarks/gpu_check.py --device cpu    # smoke run (fp32, batch 8, a scaled model)

Without --model it builds a scaled-down random-weight checkpoint of --family (mllm_embed.scaled): speed, not
quality. Throughput: the embedder end to end (image loading, prompts, processor, forward, pooling) against
`model.model(**batch)` on the same inputs built beforehand, best of --repeats. Stage-1 step: LoRA as
`lineup train stage1` sets it up, image–caption InfoNCE on --ids × 2 images + captions, forward + backward +
AdamW step, with the model's default (sdpa) attention and with gradient checkpointing. QLoRA: the same step on an
NF4 base (bitsandbytes). Peak memory: torch.cuda.max_memory_allocated per section on CUDA; on CPU the process's
peak RSS. A section that fails records its error instead of stopping the run. Prints a table and writes
benchmarks/results/gpu_check.json (--out).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.losses import Temperature, contrastive_loss  # noqa: E402
from finetune.config import ModelConfig  # noqa: E402
from finetune.train import _lora_config  # noqa: E402
from mllm_embed import load_embedder  # noqa: E402

TEXTS = ["a woman in a red coat and black trousers carrying a white handbag", "a man with a blue backpack",
         "a person in a green jacket, grey shorts and white shoes", "a child in a yellow shirt"]


def _images(n: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (256, 128, 3), dtype=np.uint8)) for _ in range(n)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def throughput(model_dir, device, dtype, batch, n, repeats) -> dict:
    emb = load_embedder(model_dir, device=device, dtype=dtype)
    images, texts = _images(n), [TEXTS[i % len(TEXTS)] + f" #{i}" for i in range(n)]
    out = {}
    for kind, items, encode, make_batch in (("images", images, emb.encode_images, emb.image_batch),
                                            ("texts", texts, emb.encode_text, emb.text_batch)):
        batches = [emb._to_device(make_batch(items[s:s + batch])) for s in range(0, n, batch)]
        backbone = emb._backbone()

        @torch.no_grad()
        def bare():
            for b in batches:
                backbone(**b).last_hidden_state[:, -1].float().cpu()

        encode(items[:batch], batch_size=batch)  # warm-up (kernels, caches)
        bare()
        ours, plain = _best(lambda: encode(items, batch_size=batch), repeats, device), _best(bare, repeats, device)
        out[kind] = {"embedder_per_s": n / ours, "bare_forward_per_s": n / plain, "overhead": ours / plain}
    out["peak_memory_mb"] = _peak_mb(device)
    return out


def stage1_step(model_dir, device, dtype, ids, steps, checkpointing=False, quantization=None) -> dict:
    cfg = ModelConfig(base_model=str(model_dir), quantization=quantization)
    emb = load_embedder(model_dir, device=device, dtype=dtype, quantization=quantization)
    emb.add_adapter(_lora_config(cfg))
    if checkpointing:
        emb.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    emb.model.train()
    params = [p for p in emb.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scale = Temperature(0.1, False).to(emb.device)
    images, pids = _images(2 * ids, seed=1), torch.arange(ids, device=emb.device).repeat_interleave(2)
    captions = [TEXTS[i // 2 % len(TEXTS)] + f" #{i // 2}" for i in range(2 * ids)]
    img_batch, txt_batch = emb.image_batch(images), emb.text_batch(captions)

    def step():
        loss = contrastive_loss(emb.embed(img_batch), emb.embed(txt_batch), scale(), pids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    step()  # warm-up
    t = _best(step, steps, device)
    return {"seconds_per_step": t, "samples_per_s": 2 * ids / t, "trainable_params": sum(p.numel() for p in params),
            "attention": getattr(emb.model.config, "_attn_implementation", "?"), "peak_memory_mb": _peak_mb(device)}


def _section(results: dict, name: str, device: str, fn) -> None:
    _reset_peak(device)
    try:
        results[name] = fn()
    except Exception as exc:  # a check script reports what failed and goes on
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model folder (default: a scaled-down --family checkpoint)")
    ap.add_argument("--family", default="qwen2_vl", help="scaled family built when --model is not given")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="bf16 on CUDA, fp32 on CPU by default")
    ap.add_argument("--batch", type=int, default=None, help="embedding batch (default 64 on CUDA, 8 on CPU)")
    ap.add_argument("--n", type=int, default=None, help="inputs per throughput run (default 4 batches)")
    ap.add_argument("--ids", type=int, default=None, help="identities per stage-1 step (×2 images; 16 / 4)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-qlora", action="store_true", help="skip the 4-bit section")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_check.json")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    batch = args.batch or (64 if cuda else 8)
    n, ids = args.n or 4 * batch, args.ids or (16 if cuda else 4)
    model_dir = args.model
    if model_dir is None:
        from mllm_embed.scaled import build_scaled

        model_dir = build_scaled(args.family, TEXTS * 20, Path(tempfile.mkdtemp(prefix="lineup-gpu-check-")))
    results: dict = {}
    _section(results, "throughput", args.device, lambda: throughput(model_dir, args.device, dtype, batch, n,
                                                                    args.repeats))
    _section(results, "stage1_sdpa", args.device, lambda: stage1_step(model_dir, args.device, dtype, ids,
                                                                      args.repeats))
    _section(results, "stage1_checkpointing", args.device,
             lambda: stage1_step(model_dir, args.device, dtype, ids, args.repeats, checkpointing=True))
    if not args.no_qlora:
        _section(results, "qlora_4bit", args.device,
                 lambda: stage1_step(model_dir, args.device, dtype, ids, args.repeats, quantization="4bit"))
    out = {"model": str(model_dir), "scaled_family": None if args.model else args.family, "device": args.device,
           "gpu": torch.cuda.get_device_name(0) if cuda else None, "dtype": dtype, "batch": batch, "n": n,
           "stage1_images": 2 * ids, "torch": torch.__version__, "machine": platform.machine(), "results": results}
    table = Table(title=f"GPU check on {out['gpu'] or args.device} ({dtype}, batch {batch})")
    for col in ("section", "result", "peak MB"):
        table.add_column(col)
    for name, r in results.items():
        if "error" in r:
            text = "[red]" + r["error"][:100]
        elif name == "throughput":
            text = " · ".join(f"{k}: {v['embedder_per_s']:.1f}/s vs bare {v['bare_forward_per_s']:.1f}/s "
                              f"({v['overhead']:.2f}×)" for k, v in r.items() if isinstance(v, dict))
        else:
            text = f"{r['seconds_per_step'] * 1000:.1f} ms/step, {r['samples_per_s']:.1f} images/s ({r['attention']})"
        table.add_row(name, text, f"{r.get('peak_memory_mb', float('nan')):.0f}")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

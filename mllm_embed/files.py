"""Files Lineup writes and reads safely: atomic outputs and content hashes of weight folders."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mllm_embed.errors import LineupError

_HEX64 = re.compile(r"[0-9a-f]{64}")
_CACHED_SIZE = 1 << 24  # smaller files are hashed again each time (milliseconds)


@contextlib.contextmanager
def atomic_output(path: str | Path, role: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an error it replaces `path` in one
    `os.replace`, so a reader never sees a half-written file and a failed run leaves the old file intact.
    A missing parent folder is created; an unwritable place is a LineupError naming `role` and the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # same suffix as the target: writers that pick a format from the name (PIL, pyarrow) still can
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask())  # not mkstemp's 0600
    except OSError as exc:
        raise LineupError(f"{role} {path}: cannot write there ({exc.strerror or exc}); pick another path") from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise LineupError(f"{role} {path}: cannot write ({exc.strerror or exc}); pick another path") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str, role: str = "output") -> Path:
    with atomic_output(path, role) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def check_writable(path: str | Path, role: str) -> None:
    """Fail early (before any model loads) when `path` cannot be written: its nearest existing parent must be a
    writable folder, and `path` itself must not be a folder."""
    path = Path(path)
    if path.is_dir():
        raise LineupError(f"{role} {path}: is a folder; give a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise LineupError(f"{role} {path}: {parent} is not a writable folder; pick another path")


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "lineup" / "sha256.json"


def file_sha256(path: str | Path, cache: dict | None = None) -> str:
    """sha256 of a file's content. A Hugging Face cache link already names its blob by it; other files are
    hashed once per (path, size, mtime) and, when big, remembered in `cache`."""
    path = Path(path)
    real = path.resolve()
    if path.is_symlink() and real.parent.name == "blobs" and _HEX64.fullmatch(real.name):
        return real.name
    stat = real.stat()
    key = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
    if cache is not None and key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with real.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    if cache is not None and stat.st_size >= _CACHED_SIZE:
        cache[key] = digest.hexdigest()
    return digest.hexdigest()


def weights_sha256(folder: str | Path, patterns: tuple[str, ...] = ("*.safetensors", "*.json")) -> str:
    """One sha256 over the names and contents of a model or adapter folder's weight and config files: equal
    for a copied folder, different for other weights at the same path. Big files are hashed once per machine
    (cache in ~/.cache/lineup/sha256.json)."""
    folder = Path(folder)
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    size = len(cache)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0{file_sha256(f, cache)}\n".encode())
    if len(cache) != size:
        with contextlib.suppress(OSError, LineupError):
            write_text_atomic(cache_path, json.dumps(cache))
    return digest.hexdigest()


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE",
                                                                                     "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except (OSError, ValueError):
        return False


def _is_local(name: str) -> bool:
    path = Path(name)
    return path.is_absolute() or name.startswith(".") or path.exists()


def check_weights_folder(folder: Path, role: str, weights: str) -> None:
    """A local folder must hold safetensors weights: a `.bin` is a pickle, and unpickling runs code."""
    if any(folder.glob("*.safetensors")):
        return
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise LineupError(f"{role} {folder}: only .bin/.pt weights (pickles, which can run code when loaded); "
                          f"Lineup loads {weights} only — convert the weights with save_pretrained(..., "
                          "safe_serialization=True)")
    raise LineupError(f"{role} {folder}: no weights ({weights} missing); copy the whole folder or rebuild it")


def check_model_weights(name: str, role: str = "--model") -> None:
    """A local model folder must hold safetensors weights (hub downloads are asked for safetensors only)."""
    if _is_local(name):
        check_weights_folder(Path(name), role, "model.safetensors")


def check_model_source(name: str, role: str = "--model") -> None:
    """Fail at once, before transformers retries the hub for half a minute: a local folder needs config.json
    (its weights: `check_model_weights`); a hub name needs the hub (or the local hub cache) to be reachable."""
    if _is_local(name):
        if not (Path(name) / "config.json").is_file():
            raise LineupError(f"{role} {name}: no model folder (config.json missing); build one with "
                              "`lineup bootstrap` or pass a hub name such as Qwen/Qwen2-VL-2B-Instruct")
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id
        raise LineupError(f"{role} {name}: not a folder and not a hub model name (owner/name)") from None
    if not cached and (_offline() or not _hub_reachable()):
        raise LineupError(f"{role} {name}: not a folder here, not in the hub cache, and the Hugging Face hub is "
                          "unreachable (offline); pass a local model folder")


def check_adapter_folder(folder: str | Path) -> Path:
    """A LoRA adapter folder as `save_adapter` writes it: adapter_config.json + adapter_model.safetensors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LineupError(f"--adapter {folder}: no such folder; pass an adapter folder or 'none'")
    if not (folder / "adapter_config.json").is_file():
        raise LineupError(f"--adapter {folder}: not a LoRA adapter folder (adapter_config.json missing); pass "
                          "the folder `lineup train` wrote (runs/STAGE/adapter)")
    check_weights_folder(folder, "--adapter", "adapter_model.safetensors")
    return folder


def model_sha256(name: str) -> str:
    """Content hash of a base model: its local folder, or its hub-cache snapshot ("" when neither is here)."""
    if _is_local(name):
        return weights_sha256(name) if Path(name).is_dir() else ""
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(name, "config.json")
    except ValueError:
        return ""
    return weights_sha256(Path(config).parent) if isinstance(config, str) else ""

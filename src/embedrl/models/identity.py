"""What identifies a model's weights, for cache keys and stored results.

A model loaded from a folder is identified by that folder and the file stamps of its weights and configs (and of
any LoRA folders loaded on top): cheap, and they change whenever the folder is rewritten. Weights that exist only
in memory (LoRA just added, a model being trained) are identified by a hash of their parameters, which reads
every weight once; inside `weights_fixed()` each model is hashed at most once.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# id(model) -> (model, digest): the model is held so that no other object can reuse its id within the block
_DIGESTS: contextvars.ContextVar[dict[int, tuple[Any, str]] | None] = contextvars.ContextVar(
    "embedrl_digests", default=None
)


def checkpoint_stamps(path: str | Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of a checkpoint or adapter folder's weight and config files."""
    folder = Path(path)
    if not folder.is_dir():
        return []
    stamps = []
    for file in sorted(folder.iterdir()):
        if file.suffix in (".safetensors", ".bin") or file.name in ("config.json", "adapter_config.json"):
            st = file.stat()
            stamps.append((file.name, st.st_size, st.st_mtime_ns))
    return stamps


@contextlib.contextmanager
def weights_fixed() -> Iterator[None]:
    """Within this block (or a function decorated with `@weights_fixed()`), weights do not change:
    `parameter_digest` hashes each model once and reuses it. Nested blocks share the outermost one's memo."""
    if _DIGESTS.get() is not None:
        yield
        return
    token = _DIGESTS.set({})
    try:
        yield
    finally:
        _DIGESTS.reset(token)


def parameter_digest(model: torch.nn.Module) -> str:
    """A hash of every parameter's name, dtype and bytes (about a second per GB)."""
    import torch

    memo = _DIGESTS.get()
    if memo is not None and id(model) in memo and memo[id(model)][0] is model:
        return memo[id(model)][1]
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            data = param.detach().reshape(-1).contiguous().cpu()
            digest.update(f"{name}:{data.dtype}:{tuple(param.shape)}".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes())
    if memo is not None:
        memo[id(model)] = (model, digest.hexdigest())
    return digest.hexdigest()


def weights_identity(
    model: torch.nn.Module, path: str | Path | None = None, adapters: Sequence[str | Path] = ()
) -> list:
    """The identity of `model`'s weights: the folder they were loaded from (resolved, so a relative and an
    absolute path agree) with its file stamps and those of the `adapters` loaded on top; without a folder, a hash
    of the parameters. The dtype is part of it either way (bf16 and fp32 vectors differ)."""
    if path:
        where = str(Path(path).resolve()) if Path(path).exists() else str(path)  # a hub id stays as given
        weights: Any = [where, checkpoint_stamps(path), [[str(a), checkpoint_stamps(a)] for a in adapters]]
    else:
        weights = parameter_digest(model)
    return [weights, str(next(model.parameters()).dtype)]

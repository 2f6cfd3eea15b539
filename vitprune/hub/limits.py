"""Size limits on a model a config file describes, checked on its ``meta``-device build before anything is
allocated: its parameters and buffers must fit the memory available now, and an image must be at most
``MAX_TOKENS`` patch tokens (an 8192-px image at patch 1 is 67 M tokens: each attention map alone would be
petabytes). ``allow_large()`` (the commands' ``--allow-large``) lifts both for the code run inside it.

Available memory is Linux's own estimate, ``MemAvailable`` in ``/proc/meminfo`` (free memory plus the page cache
and other memory the kernel can reclaim without swapping); where that file is missing, the free physical pages
(``os.sysconf("SC_AVPHYS_PAGES")``, a lower bound: it counts no cache); where neither is known, no memory check.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Any, Iterator, Optional

from ..errors import ModelNotFoundError

#: the most patch tokens per image a config may describe without ``allow_large`` (a 2048-px image at patch 16,
#: or 512 px at patch 4: 16 x ViT-B/16 at 512 px, already 4 GiB per head of a full fp32 attention map per image)
MAX_TOKENS = 16_384

_ALLOW_LARGE: contextvars.ContextVar[bool] = contextvars.ContextVar("vitprune_allow_large", default=False)


@contextlib.contextmanager
def allow_large() -> Iterator[None]:
    """Build models over the memory and token limits inside this block (the user said the machine can)."""
    token = _ALLOW_LARGE.set(True)
    try:
        yield
    finally:
        _ALLOW_LARGE.reset(token)


def available_memory() -> tuple[Optional[int], str]:
    """(bytes of memory available now, where the number comes from); ``(None, ...)`` when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:  # a system file, not a user's
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free physical pages"
    except (AttributeError, ValueError, OSError):
        return None, "unknown"


def tokens_per_image(model: Any) -> Optional[int]:
    """The patch tokens of one image at the model's input size (timm's ``patch_embed.num_patches``)."""
    n = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    return n if isinstance(n, int) else None


def check_size(meta: Any, where: str) -> None:
    """``ModelNotFoundError`` in one line when the ``meta``-device model ``meta`` (from the config at ``where``)
    has more than ``MAX_TOKENS`` tokens per image or more bytes of tensors than the memory available."""
    if _ALLOW_LARGE.get():
        return
    tokens = tokens_per_image(meta)
    if tokens is not None and tokens > MAX_TOKENS:
        raise ModelNotFoundError(f"{where} describes {tokens:,} patch tokens per image, more than {MAX_TOKENS:,}; "
                                 "give --allow-large to build it anyway.")
    nbytes = sum(t.numel() * t.element_size() for t in (*meta.parameters(), *meta.buffers()))
    memory, source = available_memory()
    if memory is not None and nbytes > memory:
        raise ModelNotFoundError(f"{where} describes a model of {nbytes / 2**30:,.1f} GiB, more than the "
                                 f"{memory / 2**30:,.1f} GiB of memory available ({source}); give --allow-large "
                                 "to build it anyway.")

"""Keep ``triton`` from loading next to an OpenGL driver's LLVM (it crashes the process).

Importing ``segment_anything`` imports ``torchvision``, which imports ``torch._dynamo``, which
tries ``import triton``. Loading triton's bundled LLVM into a process that already holds Mesa's
``libLLVM`` (napari drawing through Mesa/llvmpipe or radeonsi, e.g. Linux laptops and Xvfb)
segfaults. We never use triton (no ``torch.compile``), so when such a library is already loaded
and triton is not, triton is hidden from this process: ``import triton`` raises ImportError and
torch runs without it. Nothing changes anywhere else.
"""

from __future__ import annotations

import sys

__all__ = ["guard_triton"]


def _llvm_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:  # Linux only; elsewhere Mesa's LLVM is not a concern
            return any("libLLVM" in line for line in f)
    except OSError:
        return False


def guard_triton() -> bool:
    """Hide triton if an OpenGL LLVM is loaded and triton is not; returns True if it hid it."""
    if "triton" in sys.modules or not _llvm_loaded():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # import triton -> ImportError
    return True

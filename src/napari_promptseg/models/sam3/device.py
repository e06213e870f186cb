"""Running Meta's ``sam3`` code on a CPU or MPS device, scoped to our own calls.

Meta's package (0.1.4) creates some tensors on CUDA unconditionally: the sine position encoding
precomputes its cache with ``torch.zeros(..., device="cuda")`` (``PositionEmbeddingSine``), the
detector's decoder precomputes its box-bias coordinates with ``device="cuda"``
(``TransformerDecoder.__init__``), and the geometry encoder pins a small tensor with
``Tensor.pin_memory()`` before moving it to the boxes' device (``SequenceGeometryEncoder._encode_boxes``),
which needs CUDA. :func:`on_device` is a ``torch.overrides.TorchFunctionMode`` entered only around
our calls into that code: inside it, a ``device="cuda"`` argument of a torch function becomes the
model's device and ``pin_memory()`` is a no-op when that device is not CUDA; the video model
(:mod:`.video`) also moves tensors with ``Tensor.cuda()`` and ``.to(torch.device("cuda"))``: both
go to the model's device instead. Torch function modes are thread-local and popped on exit, so
nothing leaks into the user's process.

Importing Meta's ``sam3.model_builder`` also switches TF32 matmuls on globally when an Ampere GPU
is present (``_setup_tf32``): :func:`import_sam3` restores those flags after the import. The
attention of Meta's SAM heads (``sam3.sam.transformer``) switches the flash, math and
memory-efficient SDPA back-ends on at every call: :func:`keep_sdp_flags` restores the user's.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["on_device", "keep_sdp_flags", "import_sam3", "bpe_vocabulary"]

_BPE = "bpe_simple_vocab_16e6.txt.gz"


class _KeepOnDevice(TorchFunctionMode):
    def __init__(self, device: torch.device, video: bool = False) -> None:
        super().__init__()
        self.device = device
        self.video = video

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "pin_memory":
            return args[0]  # only reached off CUDA (see on_device): pinning needs a CUDA driver
        if name == "cuda" and args and isinstance(args[0], torch.Tensor):  # the video tracker's
            return args[0].to(self.device)  # "load it back to GPU" (Tensor.cuda())
        if name == "to" and len(args) > 1 and _is_cuda(args[1]):  # .to(torch.device("cuda"))
            args = (args[0], self.device, *args[2:])
        if self.video and name == "to" and (kwargs.get("dtype") is torch.bfloat16 or (
                len(args) > 1 and args[1] is torch.bfloat16)):
            return args[0]  # a bare cast to bfloat16 (see on_device): stays float32
        if self.video and name == "stack" and args and isinstance(args[0], (list, tuple)) and not args[0]:
            return torch.empty(0, dtype=torch.int64)  # Meta's CPU connected components of 0 masks
        dev = kwargs.get("device")
        if dev is not None and torch.device(dev).type == "cuda":
            kwargs = {**kwargs, "device": self.device}
        return func(*args, **kwargs)


def _is_cuda(arg) -> bool:
    return (isinstance(arg, torch.device) and arg.type == "cuda") or (
        isinstance(arg, str) and arg.startswith("cuda"))


def on_device(device, video: bool = False) -> contextlib.AbstractContextManager:
    """A context in which Meta's hard-coded CUDA tensors land on ``device`` (nothing on CUDA).

    video=True, for Meta's video model off CUDA, also:
    - ``Tensor.to(torch.bfloat16)`` leaves the tensor as it is. Meta casts the tracker's backbone
      maps (for its multi-GPU all-gather, ``Sam3ImageOnVideoMultiGPU._build_multigpu_buffer_next_
      chunk``) and the tracker's memory features to bfloat16, relying on a CUDA autocast to mix
      them with float32 weights; without one the next convolution fails on the mixed dtypes
      (``sam3_video_base.py``, ``run_backbone_and_detection``: "Input type (c10::BFloat16) and bias
      type (float) should be the same"), so the video model runs in float32, like our others.
    - ``torch.stack([])`` gives an empty tensor: Meta's CPU connected components
      (``sam3.perflib.connected_components.connected_components_cpu``, run by the hole filling of
      every frame) stack one result per mask and fail on a frame with no new detection ("stack
      expects a non-empty TensorList"); the GPU kernels return empty results there.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return contextlib.nullcontext()
    return _KeepOnDevice(dev, video)


@contextlib.contextmanager
def keep_sdp_flags():
    """Restore torch's SDPA back-end flags (flash, math, memory-efficient) on exit: Meta's SAM
    heads switch them all on at every attention call."""
    cuda = torch.backends.cuda
    flags = (cuda.flash_sdp_enabled(), cuda.math_sdp_enabled(), cuda.mem_efficient_sdp_enabled())
    try:
        yield
    finally:
        cuda.enable_flash_sdp(flags[0])
        cuda.enable_math_sdp(flags[1])
        cuda.enable_mem_efficient_sdp(flags[2])


def _no_triton():
    """Stand-ins for ``triton`` and ``triton.language`` while ``sam3`` is imported with triton
    hidden (:mod:`~napari_promptseg.models.triton_guard`): ``sam3.model.edt`` defines a triton
    kernel at import that only its training code (error-point sampling) runs; calling it raises."""
    import types

    def jit(fn=None, **_):
        def unavailable(*a, **k):
            raise RuntimeError("triton is hidden in this process (it crashes beside napari's OpenGL); "
                               "this SAM 3 training kernel needs it: run it outside napari")

        class Kernel:
            def __getitem__(self, grid):
                return unavailable

            __call__ = unavailable

        return Kernel() if fn is not None else (lambda f: Kernel())

    def annotation(name: str):  # tl.constexpr and the like, in the kernel's signature
        if name.startswith("__"):
            raise AttributeError(name)
        return object

    lang = types.ModuleType("triton.language")
    lang.__getattr__ = annotation
    tri = types.ModuleType("triton")
    tri.jit, tri.language = jit, lang
    return tri, lang


def import_sam3():
    """Import Meta's ``sam3`` (a clear ImportError when missing), keeping torch's TF32 flags."""
    from napari_promptseg.models.triton_guard import guard_triton

    guard_triton()
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    hidden = "triton" in sys.modules and sys.modules["triton"] is None
    try:
        if hidden:  # beside napari's OpenGL: sam3 imports triton for a training-only kernel
            import torchvision  # noqa: F401  (first, with triton hidden, as for every model)

            sys.modules["triton"], sys.modules["triton.language"] = _no_triton()
        import sam3.model_builder  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "SAM 3 models need Meta's `sam3` package and the CLIP vocabulary of `open_clip_torch`: "
            'pip install "napari-promptseg[sam3]"'
        ) from err
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        if hidden:  # hidden again for torch and everyone else
            sys.modules["triton"] = None  # type: ignore[assignment]
            sys.modules.pop("triton.language", None)
    import sam3

    return sam3


def bpe_vocabulary() -> Path:
    """The CLIP BPE vocabulary SAM 3's tokenizer reads. Meta's wheel does not ship it
    (``sam3/../assets`` is missing); ``open_clip_torch`` ships the same file."""
    import importlib.util

    found = importlib.util.find_spec("open_clip")
    for folder in (found.submodule_search_locations or []) if found else []:
        path = Path(folder) / _BPE
        if path.is_file():
            return path
    import sam3

    path = Path(sam3.__file__).parent.parent / "assets" / _BPE  # where Meta's builder looks
    if path.is_file():
        return path
    raise ImportError(
        f"SAM 3's text tokenizer needs the CLIP vocabulary {_BPE}, which Meta's sam3 wheel lacks; "
        'install open_clip_torch (pip install "napari-promptseg[sam3]"), which ships it'
    )

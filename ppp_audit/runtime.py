"""Run-time settings shared by everything that runs a model (the audit, fine-tuning, repair, the baselines and the
benchmarks): the device, autocast, full-fp32 convolutions, the host allocator, Ctrl-C, the ranks under torchrun and the
model's input normalisation. What is set here is set the same way for every pass the audit times and for the bare
passes the benchmarks compare them with.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor

from .errors import PPPAuditError
from .launch import env_flag, local_rank, process_rank
from .models import ModelInfo


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA if available (this process's local rank's GPU under torchrun), else CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank())
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PPPAuditError(f"device '{device}' requested but CUDA is not available", "use --device cpu or auto")
    return torch.device(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to ``bf16``/``fp16`` on any device (CPUs run it too, slowly without bf16 units); nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextlib.contextmanager
def ieee_fp32(enabled: bool) -> Iterator[None]:
    """Full fp32 for convolutions and matmuls while measuring, TF32 off (cuDNN convs default to TF32 on Ampere and
    later GPUs): TF32's 10-bit mantissa would round the crop and window passes (different shapes, different kernels)
    differently, so Δ would pick up rounding noise of ~1e-3 relative size where it is exactly 0 in fp32."""
    if not enabled:
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    # torch >= 2.9 sets precision per backend; there, mixing in the older allow_tf32 flags is an error.
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        flags = [(cudnn.conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    else:
        flags = [(cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]
    previous = [getattr(owner, name) for owner, name, _ in flags]
    for owner, name, value in flags:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(flags, previous):
            setattr(owner, name, value)


@dataclass
class StopRequest:
    """Set by the first Ctrl-C inside :func:`stop_on_ctrl_c`."""

    requested: bool = False


@contextlib.contextmanager
def stop_on_ctrl_c(enabled: bool = True) -> Iterator[StopRequest]:
    """The first Ctrl-C asks the measuring loop to stop after the current batch, so that every statistic still covers
    whole batches and the report of what was measured can be saved; a second Ctrl-C aborts at once.

    Enable it only in the main thread (signals reach no other) of a single process (under torchrun every rank must
    see the same batches).
    """
    request = StopRequest()
    if not enabled:
        yield request
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True
        print("\nppp-audit: stopping after this batch to keep what is measured (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size when launched by ``torchrun`` (initialising the process group)."""
    import torch.distributed as dist

    _, world = process_rank()
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


class Normalise:
    """Pixels in [0, 1] (any device) -> the model's normalised input on ``device``.

    Args:
        info: The model's :class:`ModelInfo` (mean and std).
        device: Where the model runs.
    """

    def __init__(self, info: ModelInfo, device: torch.device) -> None:
        self.mean = torch.tensor(info.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(info.std, device=device).view(1, 3, 1, 1)
        self.device = device

    def __call__(self, pixels: Tensor) -> Tensor:
        return (pixels.to(self.device, non_blocking=True) - self.mean) / self.std


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_GLIBC_DEFAULTS = ((_M_TRIM_THRESHOLD, 128 * 1024), (_M_MMAP_MAX, 65536))
_KEEP_ALL = ((_M_TRIM_THRESHOLD, 2**31 - 1), (_M_MMAP_MAX, 0))  # trim above 2 GiB only; no mmap'd blocks
_kept = 0  # depth of nested host_memory_kept blocks
DEFAULT_ALLOCATOR_ENV = "PPP_AUDIT_DEFAULT_ALLOCATOR"
"""Set (``1``) to leave the host allocator at its defaults (:func:`host_memory_kept` does nothing)."""


def _glibc() -> Any:
    """This process's C library when it is glibc (``mallopt`` and ``malloc_trim``), else ``None``."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim, libc.gnu_get_libc_version  # noqa: B018 (glibc has all three)
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def host_memory_kept(device: torch.device) -> Iterator[None]:
    """Freed host memory stays with the process for the block, on a CPU run with glibc.

    Every pass frees and allocates feature maps of tens of MB again (51 MB for resnet50's stem at batch 16). glibc
    serves blocks that large with fresh ``mmap`` pages and hands them back on ``free``, so the kernel zeroes them
    anew for every pass: measured on resnet50 at batch 16 on this project's 2-core machine, about a million page
    faults and 45 % of a crop-and-window pass's time (docs/performance.md). Inside the block malloc neither maps
    large blocks nor trims its heap, and the same blocks are reused; at exit glibc's default limits are set again
    and the heap is trimmed, so the memory goes back to the system as before. Nested blocks keep it until the
    outermost ends. Nothing is done on a GPU (PyTorch's caching allocator already reuses device memory), with another
    C library, or with ``PPP_AUDIT_DEFAULT_ALLOCATOR=1``.

    This changes where host memory comes from, never a number: the passes compute the same values.
    """
    global _kept
    libc = _glibc() if device.type == "cpu" and not env_flag(DEFAULT_ALLOCATOR_ENV) else None
    if libc is None:
        yield
        return
    if _kept == 0:
        for parameter, value in _KEEP_ALL:
            libc.mallopt(parameter, ctypes.c_int(value))
    _kept += 1
    try:
        yield
    finally:
        _kept -= 1
        if _kept == 0:
            for parameter, value in _GLIBC_DEFAULTS:
                libc.mallopt(parameter, ctypes.c_int(value))
            libc.malloc_trim(ctypes.c_size_t(0))


@contextlib.contextmanager
def measuring(device: torch.device, precision: str, *, compiled: bool = False) -> Iterator[None]:
    """The settings every measured pass runs under, and the bare passes the benchmarks compare them with: no autograd
    (inference mode; ``no_grad`` for compiled graphs, which dynamo traces under it), full fp32 for fp32
    (:func:`ieee_fp32`) and the host memory kept (:func:`host_memory_kept`). Autocast is per pass (:func:`autocast`).
    """
    grad_off = torch.no_grad() if compiled else torch.inference_mode()
    with grad_off, ieee_fp32(precision == "fp32"), host_memory_kept(device):
        yield

"""The machine a run uses: its cores, threads, device, seeds and mixed-precision dtype."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from typing import Optional

import numpy as np
import torch

from regbench.config import ConfigError

log = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which is what DataLoader checks before
    warning that more workers than cores were asked for)."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; an explicit device must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count or count == 0:
            raise ConfigError(f"trainer.device={name!r} is not allowed: this machine has "
                              f"{count} CUDA device(s); use trainer.device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.device={name!r} is not allowed: MPS is not available here; "
                          f"use trainer.device=auto or cpu")
    return device


def free_cores() -> int:
    """``trainer.num_threads=0``: the cores other processes leave free when the run starts (cores
    minus the 1-minute load average), at least 1: OpenMP threads spin-wait at every barrier, so a
    thread on a core that other work holds slows the whole step down, while on idle cores more
    threads are faster (scripts/bench_threads.py measures both; README, Performance: threads)."""
    cores = available_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return cores
    threads = max(1, min(cores, round(cores - load)))
    if threads < cores:
        log.info("trainer.num_threads=0: %d of %d cores (load average %.1f from other work)",
                 threads, cores, load)
    return threads


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere autocast emulates it
    slowly. torch exposes the check only as a private helper, hence the fallback."""
    check_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    check_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return any(check() for check in (check_bf16, check_amx) if check is not None)


# The models whose bf16 runs were shown equivalent to their fp32 runs in test accuracy and ECE
# (seed-paired TOST at +-1 pp, 10 seeds, on the digits and on the digits as 28x28 MNIST files:
# scripts/bench_bf16.py --sweep; README, Performance: bf16 on the CPU). trainer.amp=null trains
# them in bf16 on a CPU with native bf16. The torchvision ResNets have no such evidence (and an
# unfrozen ResNet-34 step is slower in bf16: README, fine-tuning), so they stay in fp32 unless asked.
CPU_BF16_DEFAULT_MODELS = frozenset({"mlp", "lenet", "convnet", "resnet"})


def autocast_dtype(device: torch.device, amp: Optional[bool], model: str) -> Optional[torch.dtype]:
    """The autocast dtype for ``trainer.amp`` (config/schema.py): false is fp32 everywhere. On
    CUDA: bf16 where supported (no loss scaling needed), else fp16. On a CPU that computes bf16
    natively (cpu_has_bf16): bf16 when asked for (true), and by default (null) for ``model`` in
    CPU_BF16_DEFAULT_MODELS; elsewhere fp32 (autocast would emulate bf16, slowly), with a warning
    when it was asked for."""
    if amp is False:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu":
        return None
    if amp is None:
        return torch.bfloat16 if model in CPU_BF16_DEFAULT_MODELS and cpu_has_bf16() else None
    if cpu_has_bf16():
        return torch.bfloat16
    log.warning("trainer.amp=true: this CPU has no native bf16 (AVX512-BF16/AMX); training in fp32")
    return None


# metrics.json's name for the precision a run trained in (its autocast dtype; None: no autocast).
PRECISION_KEY = "precision"
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """``fp32``, ``bf16`` or ``fp16``: what a run's ``amp_dtype`` computed its forward passes in."""
    return PRECISION_NAMES[dtype]

"""The machine a figure was measured on, in one line (every timing benchmark prints it first).

    python -c "from ipb.machine import describe; print(describe())"

Benchmarks print ratios against a reference measured in the same run, but the ratios too move
with the CPU: the same code gave segmentation 13.2x skimage on an Intel CPU with AMX and 11.8x
on an AMD EPYC with AVX512-BF16 (2026-12-06). A figure without its machine cannot be compared.
"""
from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def native_bf16() -> str:
    """'AMX', 'AVX512-BF16' or 'none': how this CPU computes bf16 matrix products."""
    import torch
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    return "AVX512-BF16" if torch.cpu._is_avx512_bf16_supported() else "none"


def describe() -> str:
    """`machine: <CPU>, <n> cores usable, native bf16 <kind>, torch <v>[, GPU <name>]`."""
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"machine: {cpu_model()}, {cores} cores usable, native bf16 {native_bf16()}, "
            f"torch {torch.__version__}{gpu}")


__all__ = ["cpu_model", "native_bf16", "describe"]

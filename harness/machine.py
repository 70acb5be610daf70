"""This machine in one line, for reports and timing records (absolute times mean little without it)."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    """OS, CPU model, cores, memory, GPU and torch, e.g. `Linux x86_64, AMD EPYC, 2 CPUs, 24 GiB RAM, no GPU, torch 2.13.0`."""
    import torch

    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.system()} {platform.machine()}, {model}, {os.cpu_count()} CPUs, {memory:.0f} GiB RAM{gpu}, torch {torch.__version__}"


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a container
    or a Slurm step sees fewer than os.cpu_count())."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)

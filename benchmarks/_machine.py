"""The machine a benchmark ran on, for the top of its table."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_summary() -> str:
    """CPU model, logical cores and how many this process may use."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return f"CPU: {cpu}, {os.cpu_count()} logical cores ({usable} usable)"

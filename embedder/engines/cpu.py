"""The CPU at hand, as far as int8 cares: its model, its cores and the instruction sets that change how ONNX Runtime
computes int8 (and so what an int8 engine costs in accuracy here).

On x86-64, ONNX Runtime's U8S8 kernels use VNNI (``avx512_vnni``, ``avx_vnni``) or AMX where the CPU has them, and
otherwise AVX2's ``vpmaddubsw``, whose 16-bit sums of two products can saturate: the same int8 file then gives other
vectors on an AVX2-only CPU than on a VNNI one. Read from ``/proc/cpuinfo`` (Linux; py-cpuinfo elsewhere when it is
installed); where neither says, the flags are unknown (``None``), never guessed.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

# The flags that matter, by their /proc/cpuinfo names (x86-64, then Arm's int8 dot products).
FLAGS = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimddp",
    "i8mm",
)
VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products without 16-bit saturation


@dataclass(frozen=True)
class CpuInfo:
    """What a run's CPU was: ``model`` (as the OS names it), ``cores`` this process may use, ``arch``
    (``platform.machine()``), and ``flags``: those of ``FLAGS`` it has, or None when they could not be read."""

    model: str
    cores: int
    arch: str
    flags: tuple[str, ...] | None

    @property
    def int8_kind(self) -> str:
        """The kind of CPU as int8 sees it: ``vnni`` (x86-64 with VNNI or AMX), ``avx2`` (x86-64 without: U8S8 may
        saturate), ``arm-dot`` (Arm with int8 dot products), ``other`` (flags known, none of these), ``unknown``."""
        if self.flags is None:
            return "unknown"
        if any(f in self.flags for f in VNNI):
            return "vnni"
        if "avx2" in self.flags:
            return "avx2"
        if "asimddp" in self.flags:
            return "arm-dot"
        return "other"

    def describe(self) -> str:
        """One line for a person: ``AMD EPYC, 2 cores, x86_64: avx2 (no VNNI: int8 kind avx2)``."""
        flags = "flags unknown" if self.flags is None else (" ".join(self.flags) or "none of " + "/".join(FLAGS))
        return f"{self.model}, {self.cores} cores, {self.arch}: {flags} (int8 kind {self.int8_kind})"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "cores": self.cores,
            "arch": self.arch,
            "flags": None if self.flags is None else list(self.flags),
            "int8_kind": self.int8_kind,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CpuInfo:
        flags = d.get("flags")
        return cls(
            str(d.get("model", "?")),
            int(d.get("cores", 0)),
            str(d.get("arch", "?")),
            None if flags is None else tuple(flags),
        )


def parse_cpuinfo(text: str, arch: str, cores: int) -> CpuInfo:
    """``/proc/cpuinfo``'s text → ``CpuInfo`` (the first processor's model and flags)."""
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "cpu model", "hardware"):
            model = value.strip()
        elif flags is None and key in ("flags", "features"):  # x86 says flags, Arm says Features
            flags = set(value.split())
    return CpuInfo(
        model or platform.processor() or arch,
        cores,
        arch,
        None if flags is None else tuple(f for f in FLAGS if f in flags),
    )


def cpu_cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def current_cpu() -> CpuInfo:
    """This machine's ``CpuInfo`` (read once per process)."""
    arch, cores = platform.machine() or "?", cpu_cores()
    try:
        with open("/proc/cpuinfo") as fh:
            return parse_cpuinfo(fh.read(), arch, cores)
    except OSError:
        pass
    try:  # macOS, Windows: py-cpuinfo reads CPUID itself, when it is installed
        import cpuinfo  # type: ignore[import-not-found]

        got = cpuinfo.get_cpu_info()
        text = f"model name: {got.get('brand_raw', '')}\nflags: {' '.join(got.get('flags', []))}\n"
        return parse_cpuinfo(text, arch, cores)
    except Exception:  # absent, or it failed: the flags stay unknown
        return CpuInfo(platform.processor() or arch, cores, arch, None)


def same_kind(a: dict | None, b: CpuInfo) -> bool:
    """Whether a recorded CPU (``CpuInfo.to_dict()``) computes int8 as ``b`` does: the same flags that matter.
    An unknown record (an older cache's) is taken as the same: nothing can be said."""
    if not a:
        return True
    return a.get("flags") is None or b.flags is None or tuple(a["flags"]) == b.flags

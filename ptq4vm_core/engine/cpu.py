"""What this CPU's int8 convolutions compute: exact dot products, or saturating ones.

On x86 the u8 x s8 int8 kernels reduce four products into int32 in one instruction where the
CPU has VNNI (AVX512-VNNI, AVX-VNNI, or AMX): exact. Without it oneDNN, and with it OpenVINO,
multiplies with `vpmaddubsw`, which adds pairs of u8*s8 products into int16 *with saturation*:
a pair of bright pixels under two large weights (255 * 127 * 2 > 32767) is clipped. RVM's
stem and most of its dense int8 convs reach that on real frames; on a negated clip OpenVINO's
int8 matte moved by 100/255 on average (ONEDNN_MAX_CPU_ISA=AVX2 on a VNNI machine, the same
figure the CI's VNNI-less CPU printed). ONNX Runtime's kernels stay within 0.8/255 of the VNNI
result there (under `qemu-x86_64 -cpu Haswell`), so without VNNI the int8 model runs on it.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

from ptq4vm_core.quant.spec import Int8Target

X86 = frozenset({"x86_64", "amd64", "i386", "i686"})
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA, which OpenVINO's CPU plugin honours) that stop below
# every VNNI ISA: with one of them set, oneDNN saturates whatever the CPU has.
NO_VNNI_CAPS = frozenset({"SSE41", "AVX", "AVX2", "AVX512_CORE"})
# The caps that stop below oneDNN's bf16 ISA (AVX512_CORE_BF16): bf16 is then emulated, not
# run on the CPU's bf16 units, although OpenVINO still lists BF16 among its capabilities.
NO_BF16_CAPS = NO_VNNI_CAPS | {"AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE_VNNI"}
# Why the int8 model does not run on OpenVINO where `int8_dot_exact` is false (logs, errors).
SATURATION_REASON = (
    "this CPU's int8 convolutions saturate in OpenVINO (x86 without VNNI: pairs of u8 x s8 "
    "products are summed in int16 and clipped, which moves the matte by up to 100/255)"
)


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first value of each key of /proc/cpuinfo (the first CPU's); empty where that file
    does not exist (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (the first `flags` line of /proc/cpuinfo); empty where that
    file does not exist (not Linux) or has none (not x86)."""
    return frozenset(_cpuinfo().get("flags", "").split())


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (the first `model name` line of /proc/cpuinfo, with its family and
    model numbers, which tell generations apart where the name does not: a VM's "AMD EPYC" is
    Zen 3 at family 25 model 1, Zen 4 at model 17), else what `platform.processor()` says,
    else the architecture."""
    fields = _cpuinfo()
    name = fields.get("model name")
    if name is None:
        return platform.processor() or machine()
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def cpu_class() -> str:
    """What benchmark reports call this CPU: "VNNI" (exact int8 dot products), "AVX2-only"
    (x86 without VNNI; "capped to AVX2" when ONEDNN_MAX_CPU_ISA makes a VNNI CPU act so), or
    the architecture elsewhere; "+bf16" where the CPU has AVX512-BF16 or AMX-BF16."""
    flags = cpu_flags()
    if machine() not in X86:
        label = machine()
    elif int8_dot_exact():
        label = "VNNI"
    elif flags & VNNI_FLAGS:
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
        label = f"VNNI capped to {cap} by ONEDNN_MAX_CPU_ISA"
    else:
        label = "AVX2-only" if "avx2" in flags else "x86 without AVX2"
    if flags & {"avx512_bf16", "amx_bf16"}:
        label += " +bf16"
    return label


def default_int8_target() -> Int8Target:
    """The int8 target a model built for this CPU is calibrated for: `vnni` where its int8
    dot products are exact, else `avx2` (saturation-safe weights)."""
    return Int8Target.VNNI if int8_dot_exact() else Int8Target.AVX2


def machine() -> str:
    """The CPU architecture, lower case (`x86_64`, `aarch64`, ...)."""
    return platform.machine().lower()


def bf16_capped() -> bool:
    """Whether ONEDNN_MAX_CPU_ISA keeps oneDNN (so OpenVINO) off the CPU's bf16 units."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in NO_BF16_CAPS


def int8_dot_exact() -> bool:
    """Whether OpenVINO's int8 convolutions compute exact dot products here: not on x86
    without VNNI (or with oneDNN capped below it); on other architectures (Arm's int8 dot
    products accumulate in int32) yes."""
    if machine() not in X86:
        return True
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in NO_VNNI_CAPS:
        return False
    return bool(cpu_flags() & VNNI_FLAGS)

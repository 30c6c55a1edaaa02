"""``run.precision``: what the host can do in bf16, and the one place where ``auto`` is resolved.

``auto`` picks:

- on CUDA: ``bf16`` where the GPU supports it (``torch.cuda.is_bf16_supported()``), else ``fp32``;
- on CPU: ``bf16`` only where the CPU has native bf16 matmul instructions (AMX tiles, or
  AVX512-BF16 when oneDNN reports bf16 support), a short timed matmul probe shows bf16 at least
  :data:`CPU_BF16_MIN_SPEEDUP` times faster than fp32, and the model has at least
  :data:`CPU_BF16_MIN_PARAMETERS` parameters; otherwise ``fp32``.

Why a probe and a model-size floor on CPU: autocast casts every weight entering a matmul to bf16 in
each forward, and the optimizer (fp32 master weights), norms and element-wise ops do not get faster,
so the step gains far less than the matmul and a small model gains least. Measured with
benchmarks/bf16_step.py (interleaved, 1 thread) on an AMD EPYC with AVX512-BF16 and no AMX (1024^2
matmul 3.9-4.8x faster in bf16), while the attention still ran in bf16: tiny (2.6M parameters)
0.85x at batch 2 and 1.04x at batch 64; small (47M) 1.47x at batch 2 and 1.79x at batch 32; base
(394M) 1.99x at batch 2. On an AMX host, with the attention upcast to fp32 under CPU autocast
(mpma.models.layers.attend) and run.retain_freed_memory on: tiny 0.85x at batch 2 and 1.57x at batch
64, small 2.09x at batch 32, base 1.55x at batch 2 and 2.23x at batch 8 (benchmarks/README.md, "bf16
on CPU"). tiny at batch 2 still loses, hence the floor.
"""

from __future__ import annotations

import functools
import time

import torch

# bf16 / fp32 matmul FLOP/s the probe must show before auto picks bf16 on CPU. It guards against hosts
# where bf16 matmuls are not faster at all (no fast oneDNN path: ~50x slower); a host with native bf16
# measured 3.9-4.8x at 1024^2, and the 512^2 probe varied 2.9-31x under heavy load, hence the margin.
CPU_BF16_MIN_SPEEDUP = 1.5
CPU_BF16_MIN_PARAMETERS = 20_000_000  # measured: 2.6M parameters lose in bf16 on CPU, 47M gain 1.5x
PROBE_SIZE = 512  # square matmul of the probe (a ViT-B token block is (B*197, 768) x (768, 768))


def cpu_bf16_features() -> dict[str, bool]:
    """What this CPU and this torch build offer for bf16 (read at run time, never assumed).

    Returns:
        ``avx512_bf16`` and ``amx_tile`` (CPU instructions, as torch's cpuinfo sees them),
        ``mkldnn_bf16`` (oneDNN will run bf16 matmuls natively) and ``native`` (any of the
        instruction sets, with oneDNN able to use it).
    """
    def flag(name: str) -> bool:
        probe = getattr(torch.cpu, name, None)  # private helpers: absent in some torch versions
        try:
            return bool(probe()) if probe is not None else False
        except RuntimeError:
            return False

    features = {"avx512_bf16": flag("_is_avx512_bf16_supported"), "amx_tile": flag("_is_amx_tile_supported")}
    try:
        features["mkldnn_bf16"] = bool(torch.backends.mkldnn.is_available()
                                       and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        features["mkldnn_bf16"] = False
    features["native"] = features["mkldnn_bf16"] and (features["avx512_bf16"] or features["amx_tile"])
    return features


def _matmul_seconds(dtype: torch.dtype, size: int, calls: int) -> float:
    """Best of three timings of ``calls`` (size, size) @ (size, size) matmuls in ``dtype`` (after a warm-up)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            a @ b
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=None)
def cpu_bf16_matmul_speedup(size: int = PROBE_SIZE, calls: int = 4) -> float:
    """fp32 time / bf16 time of ``calls`` square ``size`` matmuls on CPU (best of 3 each; ~0.1-0.5 s).

    Cached per process: the answer does not change within a run.
    """
    return _matmul_seconds(torch.float32, size, calls) / _matmul_seconds(torch.bfloat16, size, calls)


def resolve_precision(precision: str, device: torch.device, parameters: int | None = None) -> str:
    """The precision a run on ``device`` uses for ``run.precision=precision``.

    Args:
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"``.
        device: the device the run trains on.
        parameters: parameters of the trained model; on CPU, ``auto`` keeps fp32 below
            :data:`CPU_BF16_MIN_PARAMETERS` (None: not considered).

    Returns:
        ``"fp32"``, ``"bf16"`` or ``"fp16"`` (``auto`` resolved as the module docstring says; the
        others unchanged).

    Raises:
        ValueError: an unknown precision, or fp16 on a CPU.
    """
    if precision not in ("fp32", "bf16", "fp16", "auto"):
        raise ValueError(f"run.precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("run.precision=fp16 needs a GPU; use bf16 (or auto) on CPU")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type != "cpu" or not cpu_bf16_features()["native"]:
        return "fp32"
    if parameters is not None and parameters < CPU_BF16_MIN_PARAMETERS:
        return "fp32"
    return "bf16" if cpu_bf16_matmul_speedup() >= CPU_BF16_MIN_SPEEDUP else "fp32"


def describe_cpu_bf16() -> str:
    """One line for logs and benchmark headers: the CPU's bf16 features and the probe's speed-up."""
    features = cpu_bf16_features()
    found = [name for name in ("avx512_bf16", "amx_tile") if features[name]] or ["no native bf16"]
    speedup = f", bf16/fp32 matmul probe {cpu_bf16_matmul_speedup():.1f}x" if features["native"] else ""
    return f"CPU {torch.backends.cpu.get_cpu_capability()}, {' + '.join(found)}, oneDNN bf16 " \
           f"{'yes' if features['mkldnn_bf16'] else 'no'}{speedup}"

"""Lion, as published, and the article's sign-Adam formula (which is not Lion).

Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2):

    update = sign(beta1 * m + (1 - beta1) * g)     # sign of an interpolation
    p      = p * (1 - lr * wd) - lr * update       # decoupled weight decay
    m      = beta2 * m + (1 - beta2) * g           # one moment, updated after use

Lion keeps one moment (4 bytes/parameter in fp32) where AdamW keeps two. Every
coordinate moves by exactly +-lr (or 0), so Lion's lr must be 3-10x smaller than
AdamW's and its weight decay 3-10x larger to keep lr * wd comparable.

A step is memory-bound: per parameter it must read p, g, m and write p, m (5 streams
of 4 bytes; AdamW: 7), so at the memory floor it costs 5/7 of AdamW's. Four code paths
compute the same update (``implementation=``):
  * "single_tensor": a plain loop, the readable reference;
  * "foreach": torch._foreach_* ops over all tensors; each op is a pass over memory
    (~13 streams in all) and the interpolation a fresh temporary: 5-10x the floor's time;
  * "compiled": one torch.compile'd kernel per tensor (5 streams; each tensor pays a
    Python call; first use compiles, ~15 s with a cold inductor cache);
  * "cpu_kernel": one C++ OpenMP loop over all float32 CPU tensors (5 streams, one call
    per step, at the memory bandwidth); built on first use in under 1 s (plain C++, no
    torch headers) and cached in TORCH_EXTENSIONS_DIR like DeepSpeed's ops.
"auto" (the default) takes cpu_kernel for float32 CPU tensors and foreach for the rest
(CUDA, bf16, or no C++ compiler). benchmarks/bench_optim.py measures every path against
the machine's memory bandwidth, torch's AdamW and DeepSpeed's CPU Lion.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import warnings
from pathlib import Path
from typing import Callable, Iterable, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

Implementation = Literal["auto", "cpu_kernel", "compiled", "foreach", "single_tensor"]
IMPLEMENTATIONS: tuple[str, ...] = Implementation.__args__


def _lion_tensor_update(p: Tensor, g: Tensor, m: Tensor, lr: Tensor, beta1: Tensor,
                        beta2: Tensor, decay: Tensor) -> None:
    """One tensor's Lion step in place; written so inductor fuses it into a single loop."""
    update = torch.sign(torch.lerp(m, g, 1 - beta1))
    p.copy_(p * decay - lr * update)
    m.copy_(torch.lerp(m, g, 1 - beta2))


@functools.cache
def _compiled_kernel() -> Callable:
    """Compile the per-tensor update once per process (inductor caches across processes)."""
    # dynamic=True: one kernel for every tensor length, no recompiling per shape
    return torch.compile(_lion_tensor_update, dynamic=True, fullgraph=True)


# Rounds as torch's CPU kernels do (lerp: one fma; mul_ then add_ with alpha: two roundings;
# -ffp-contract=off keeps every other rounding as written), so its parameters and moments
# equal the single_tensor and foreach paths' bit for bit (tests/test_lion.py checks it).
_CPU_KERNEL_SOURCE = r"""
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <omp.h>
#if defined(__x86_64__)  // one binary for every x86 machine: AVX-512, AVX2+FMA or SSE2, picked at load
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

static inline float lerp(float a, float b, float w) {  // torch.lerp as ATen vectorises it
    return std::fabs(w) < 0.5f ? std::fma(w, b - a, a) : std::fma(w - 1.0f, b - a, b);
}

CLONES static void lion_span(float* __restrict p, const float* __restrict g, float* __restrict m,
                             int64_t n, float lr, float w1, float w2, float decay) {
    for (int64_t i = 0; i < n; ++i) {  // each stream read once, p and m written once
        const float mi = m[i], gi = g[i];
        const float c = lerp(mi, gi, w1);
        const float u = float((c > 0.0f) - (c < 0.0f));  // torch.sign: 0 for 0 and NaN
        p[i] = std::fma(u, -lr, p[i] * decay);            // u * lr is exact
        m[i] = lerp(mi, gi, w2);
    }
}

// All tensors in one parallel region: thread k takes the k-th slice of their concatenation.
extern "C" void lion_step_f32(int64_t n_tensors, float* const* p, const float* const* g,
                              float* const* m, const int64_t* numel, float lr, float w1,
                              float w2, float decay, int n_threads) {
    int64_t total = 0;
    for (int64_t t = 0; t < n_tensors; ++t) total += numel[t];
#pragma omp parallel num_threads(n_threads)
    {
        const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
        const int64_t begin = total * id / threads, end = total * (id + 1) / threads;
        int64_t offset = 0;  // of tensor t in the concatenation
        for (int64_t t = 0; t < n_tensors && offset < end; offset += numel[t], ++t) {
            const int64_t lo = std::max<int64_t>(begin - offset, 0), hi = std::min(end - offset, numel[t]);
            if (lo < hi) lion_span(p[t] + lo, g[t] + lo, m[t] + lo, hi - lo, lr, w1, w2, decay);
        }
    }
}
"""


@functools.cache
def _cpu_kernel() -> Callable | None:
    """Build (once per source version, in TORCH_EXTENSIONS_DIR) and load the C++ kernel.

    None when it cannot be built (no C++ compiler or OpenMP): "auto" then uses foreach.
    """
    from torch.utils import cpp_extension

    digest = hashlib.sha256(_CPU_KERNEL_SOURCE.encode()).hexdigest()[:12]
    source = Path(cpp_extension.get_default_build_root()) / "dslib_lion_src" / f"lion_cpu_{digest}.cpp"
    try:
        if not source.exists():  # named by content: concurrent writers write the same bytes
            source.parent.mkdir(parents=True, exist_ok=True)
            partial = source.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(_CPU_KERNEL_SOURCE)
            partial.replace(source)
        library = cpp_extension.load(
            "dslib_lion_cpu", [str(source)], extra_cflags=["-O3", "-fopenmp", "-ffp-contract=off"],
            extra_ldflags=["-fopenmp"], is_python_module=False)
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"Lion: the C++ CPU kernel did not build ({error}); using foreach", stacklevel=3)
        return None
    kernel = ctypes.CDLL(library).lion_step_f32
    pointers = ctypes.POINTER(ctypes.c_void_p)
    kernel.argtypes = [ctypes.c_int64, pointers, pointers, pointers, ctypes.POINTER(ctypes.c_int64),
                       ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_int]
    kernel.restype = None
    return kernel



def closure_loss(closure: Callable[[], Tensor] | None) -> Tensor | None:
    """The loss a step's closure re-evaluates (with gradients enabled), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()

class Lion(Optimizer):
    """Lion optimizer (Chen et al. 2023); ``implementation`` picks the code path (module doc).

    Defaults are the paper's (lr 1e-4, betas 0.9/0.99). DeepSpeed's Lion defaults
    differ (lr 1e-3, betas 0.9/0.999): pass values explicitly when comparing.
    """

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, implementation: Implementation = "auto"):
        if lr <= 0.0:
            raise ValueError(f"Lion: lr must be > 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion: betas must be in [0, 1), got {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"Lion: weight_decay must be >= 0, got {weight_decay}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"Lion: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if implementation == "cpu_kernel" and _cpu_kernel() is None:
            raise RuntimeError("Lion: implementation='cpu_kernel' needs a C++ compiler with OpenMP")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))
        # the optimizer's, not a group's: a loaded state_dict (maybe from another machine) keeps it
        self.implementation = implementation

    def __getstate__(self) -> dict:  # torch's keeps defaults, state and param_groups only
        return {**super().__getstate__(), "implementation": self.implementation}

    def _collect(self, group: dict) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        params, grads, exp_avgs = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Lion does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
        return params, grads, exp_avgs

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = closure_loss(closure)
        for group in self.param_groups:
            params, grads, exp_avgs = self._collect(group)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            hyper = dict(lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"])
            implementation = self.implementation
            if implementation == "auto":
                on_cpu = any(p.device.type == "cpu" for p in params)
                implementation = "cpu_kernel" if on_cpu and _cpu_kernel() is not None else "foreach"
            if implementation == "cpu_kernel":  # what it cannot take goes through foreach
                params, grads, exp_avgs = _cpu_kernel_lion(params, grads, exp_avgs, **hyper)
                implementation = "foreach"
            if params:
                _PATHS[implementation](params, grads, exp_avgs, **hyper)
        return loss


def _single_tensor_lion(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *,
                        lr: float, beta1: float, beta2: float, weight_decay: float) -> None:
    for p, g, m in zip(params, grads, exp_avgs):
        update = torch.lerp(m, g, 1 - beta1).sign_()
        if weight_decay != 0.0:
            p.mul_(1 - lr * weight_decay)
        p.add_(update, alpha=-lr)
        m.lerp_(g, 1 - beta2)


def _multi_tensor_lion(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *,
                       lr: float, beta1: float, beta2: float, weight_decay: float) -> None:
    updates = torch._foreach_lerp(exp_avgs, grads, 1 - beta1)
    torch._foreach_sign_(updates)
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_add_(params, updates, alpha=-lr)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)


def _compiled_lion(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *,
                   lr: float, beta1: float, beta2: float, weight_decay: float) -> None:
    kernel = _compiled_kernel()
    # hyper-parameters as 0-dim tensors: a changed lr (scheduler) must not recompile
    # (float32 even for bf16 parameters: 1 - lr*wd would round to 1.0 in bf16)
    scalars = torch.tensor([lr, beta1, beta2, 1 - lr * weight_decay], dtype=torch.float32,
                           device=params[0].device)
    lr_t, b1_t, b2_t, decay_t = scalars.unbind()
    for p, g, m in zip(params, grads, exp_avgs):
        if not (p.is_contiguous() and m.is_contiguous()):  # rare: in-place view(-1) needs contiguity
            _single_tensor_lion([p], [g], [m], lr=lr, beta1=beta1, beta2=beta2,
                                weight_decay=weight_decay)
            continue
        kernel(p.view(-1), g.reshape(-1), m.view(-1), lr_t, b1_t, b2_t, decay_t)


def _cpu_kernel_lion(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *,
                     lr: float, beta1: float, beta2: float,
                     weight_decay: float) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Step the float32 contiguous CPU tensors in one kernel call; return the others, untouched."""
    taken, rest = [], []
    for p, g, m in zip(params, grads, exp_avgs):
        fits = all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in (p, g, m))
        (taken if fits and p.numel() else rest).append((p, g, m))
    if taken:
        n = len(taken)
        p_ptrs, g_ptrs, m_ptrs = ((ctypes.c_void_p * n)(*(t[i].data_ptr() for t in taken)) for i in range(3))
        numel = (ctypes.c_int64 * n)(*(p.numel() for p, _, _ in taken))
        # the same float32 roundings of the hyper-parameters as torch's kernels make
        _cpu_kernel()(n, p_ptrs, g_ptrs, m_ptrs, numel, lr, 1 - beta1, 1 - beta2, 1 - lr * weight_decay,
                      torch.get_num_threads())
        # written behind autograd's back: bump the version counters as an in-place op would,
        # so a graph that saved p still fails loudly instead of using the new values
        torch.autograd.graph.increment_version([t for p, _, m in taken for t in (p, m)])
    return [t[0] for t in rest], [t[1] for t in rest], [t[2] for t in rest]


_PATHS = {"single_tensor": _single_tensor_lion, "foreach": _multi_tensor_lion, "compiled": _compiled_lion}


class ArticleSignAdam(Optimizer):
    """The article's "Lion" formula. NOT Lion: an Adam variant using sign(m) / (sqrt(s) + eps).

        m = beta1 * m + (1 - beta1) * g
        s = beta2 * s + (1 - beta2) * g**2
        p = p - lr * sign(m) / (sqrt(s) + eps)     (plus decoupled weight decay)

    It keeps two moments like Adam (8 bytes/parameter), and its step size is
    lr / (sqrt(s) + eps): tiny gradients give huge steps (up to lr / eps), the
    opposite of Lion's fixed +-lr. Kept only so chapter 08 can compare it.
    """

    def __init__(self, params: Iterable, lr: float = 1e-5, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        if lr <= 0.0 or eps <= 0.0 or weight_decay < 0.0:
            raise ValueError(f"ArticleSignAdam: bad lr={lr}, eps={eps} or weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = closure_loss(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p)
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p)
            grads = [p.grad for p in params]
            exp_avgs = [self.state[p]["exp_avg"] for p in params]
            exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
            beta1, beta2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(denom, group["eps"])
            signs = torch._foreach_sign(exp_avgs)
            if wd != 0.0:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_addcdiv_(params, signs, denom, value=-lr)
        return loss


def state_bytes_per_param(optimizer: Optimizer) -> dict[str, float]:
    """Optimizer state bytes per parameter, measured from the state tensors themselves.

    Returns {"total": bytes/param, <state key>: bytes/param, ...}; parameters without
    state yet (no step taken) still count in the denominator.
    """
    n_params = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    by_key: dict[str, int] = {}
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                by_key[key] = by_key.get(key, 0) + value.numel() * value.element_size()
    out = {key: nbytes / n_params for key, nbytes in sorted(by_key.items())}
    out["total"] = sum(by_key.values()) / n_params
    return out

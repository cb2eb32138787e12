"""Lion, as published, and the article's sign-Adam formula (which is not Lion).

Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2):

    update = sign(beta1 * m + (1 - beta1) * g)     # sign of an interpolation
    p      = p * (1 - lr * wd) - lr * update       # decoupled weight decay
    m      = beta2 * m + (1 - beta2) * g           # one moment, updated after use

Lion keeps one moment (4 bytes/parameter in fp32) where AdamW keeps two. Every
coordinate moves by exactly +-lr (or 0), so Lion's lr must be 3-10x smaller than
AdamW's and its weight decay 3-10x larger to keep lr * wd comparable.

Three code paths compute the same update:
  * single-tensor: a plain loop, the readable reference;
  * foreach: torch._foreach_* ops, one kernel launch per op for all tensors;
  * fused: one torch.compile'd kernel per tensor that reads p, g, m once and
    writes p, m once (5 memory streams instead of ~13 for foreach).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer


def _lion_tensor_update(p: Tensor, g: Tensor, m: Tensor, lr: Tensor, beta1: Tensor,
                        beta2: Tensor, decay: Tensor) -> None:
    """One tensor's Lion step in place; written so inductor fuses it into a single loop."""
    update = torch.sign(torch.lerp(m, g, 1 - beta1))
    p.copy_(p * decay - lr * update)
    m.copy_(torch.lerp(m, g, 1 - beta2))


_compiled_update: Callable | None = None


def _fused_kernel() -> Callable:
    """Compile the per-tensor update once per process (inductor caches across processes)."""
    global _compiled_update
    if _compiled_update is None:
        # dynamic=True: one kernel for every tensor length, no recompiling per shape
        _compiled_update = torch.compile(_lion_tensor_update, dynamic=True, fullgraph=True)
    return _compiled_update


class Lion(Optimizer):
    """Lion optimizer (Chen et al. 2023) with single-tensor, foreach and fused paths.

    Defaults are the paper's (lr 1e-4, betas 0.9/0.99). DeepSpeed's Lion defaults
    differ (lr 1e-3, betas 0.9/0.999): pass values explicitly when comparing.
    ``foreach`` (default True) uses torch._foreach_* ops; ``fused=True`` uses a
    torch.compile'd kernel (first step compiles, ~20 s on CPU).
    """

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, foreach: bool | None = None, fused: bool = False):
        if lr <= 0.0:
            raise ValueError(f"Lion: lr must be > 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion: betas must be in [0, 1), got {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"Lion: weight_decay must be >= 0, got {weight_decay}")
        if fused and foreach:
            raise ValueError("Lion: choose fused or foreach, not both")
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay,
                        foreach=not fused if foreach is None else foreach, fused=fused)
        super().__init__(params, defaults)

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
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs = self._collect(group)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            if group["fused"]:
                step_fn = _fused_lion
            elif group["foreach"]:
                step_fn = _multi_tensor_lion
            else:
                step_fn = _single_tensor_lion
            step_fn(params, grads, exp_avgs, lr=group["lr"], beta1=beta1, beta2=beta2,
                    weight_decay=group["weight_decay"])
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


def _fused_lion(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *,
                lr: float, beta1: float, beta2: float, weight_decay: float) -> None:
    kernel = _fused_kernel()
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
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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

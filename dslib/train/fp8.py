"""FP8 training with fine-grained scaling (DeepSeek-V3, arXiv 2412.19437, section 3.3), and the
per-tensor scaling it improves on (the common recipe, e.g. torchao's "tensorwise" float8).

E4M3 (torch.float8_e4m3fn) everywhere, as V3: 4 exponent bits, 3 mantissa bits, largest value 448,
no infinity. A tensor is held as FP8 data and FP32 scales, x ~= data * scale, one scale per block:
  per-tensor    one scale for the whole tensor
  fine-grained  activations and gradients per 1 x 128 tile along the contraction dimension (one
                token, 128 channels), weights per 128 x 128 block
scale = amax(block) / 448, so an outlier coarsens only its own tile, not the whole tensor.

Rounding error of one element, x_hat = dequantise(quantise(x)), in units of its block's scale s:
  |x / s| >= 2^-6 (E4M3's smallest normal):  |x_hat - x| <= 2^-4 |x|   (half of the 2^-3 ulp)
  below it (subnormals, spacing 2^-9):       |x_hat - x| <= 2^-10 s
Values that are E4M3 numbers times their block's scale come back exactly.

The GEMM is the real ``torch._scaled_mm``. On CPU, torch 2.13 accepts tensor-wise scales
(singletons) and row-wise ones (scale_a [M, 1], scale_b [1, N]); it refuses block-wise scales
(ValueError "Invalid scaling configuration", also for F.scaled_mm's BlockWise1x128/128x128).
A 1 x 128 tile's scale is a row-wise scale of one 128-wide slice of K, and a 128 x 128 block's
scale is a column-wise scale of that slice (repeated over its 128 columns), so the fine-grained
GEMM is one row-wise ``_scaled_mm`` per K-slice of 128 with the partial products summed in FP32:
V3's "promotion every 128 elements along K". (On H800 the tensor cores accumulate in about 14
bits, which the promotion repairs; a CPU accumulates each slice in FP32 already, so here only
the structure is V3's, not the accumulation error it removes.)

Each Linear runs its three GEMMs in FP8 (V3's Figure 6), master weights and gradients in FP32:
  fprop  y  = x W^T    x tiled 1 x 128 along K (per token), W in 128 x 128 blocks
  dgrad  dx = dy W     dy tiled 1 x 128 along N (per token), the same W blocks (a square block
                       scale serves W and W^T alike: no re-quantisation of the weight)
  wgrad  dW = dy^T x   dy and x tiled 128 x 1 (along the tokens, the contraction here)
The forward keeps x in FP8 for the backward, as V3 caches FP8 activations; wgrad dequantises
and re-quantises it along the tokens (the double rounding V3's section 3.5.2 asks hardware to
remove).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448.0
E4M3_MIN_NORMAL = 2.0**-6
E4M3_RELATIVE_ERROR = 2.0**-4  # round-to-nearest, normal range
E4M3_SUBNORMAL_ERROR = 2.0**-10  # absolute, in units of the scale
TILE = 128  # V3's tile and block edge

# Linear layers V3 keeps in BF16/FP32 (section 3.3: "the embedding module, the output head, MoE
# gating modules, normalization operators, and attention operators"): a pattern on the layer's
# qualified name -> why. Embeddings, norms, the MoE router (an F.linear on its own weight) and the
# attention core (SDPA: q k^T, softmax, p v) are no nn.Linear, so they are never converted;
# MLA's projections (q_down, q_up, kv_down, kv_up, o_proj) are GEMMs and run in FP8, as in V3.
FP8_EXCLUDED: dict[str, str] = {
    r"(^|\.)head$": "output head: its logits feed the softmax and the loss",
    r"(^|\.)(router|gate)(\.|$)": "gating: a routing or skip decision flips on small rounding",
    r"(^|\.)embed": "embedding: a lookup, no GEMM",
    r"norm": "normalisation",
}


@dataclass
class Scaled:
    """An FP8 matrix with its FP32 scales: data [R, C] ~ x / scale, one scale per ``block``
    (scale [ceil(R / block_rows), ceil(C / block_cols)])."""
    data: torch.Tensor
    scale: torch.Tensor
    block: tuple[int, int]

    def dequantise(self) -> torch.Tensor:
        rows, cols = self.data.shape
        scale = self.scale.repeat_interleave(self.block[0], 0).repeat_interleave(self.block[1], 1)
        return self.data.float() * scale[:rows, :cols]

    def t(self) -> "Scaled":
        """The transpose: a block scale transposes with its block, nothing is re-quantised."""
        return Scaled(self.data.t(), self.scale.t(), (self.block[1], self.block[0]))


def quantise(x: torch.Tensor, block: tuple[int, int]) -> Scaled:
    """x [R, C] (any float) -> E4M3 data with one scale per block (edge blocks may be partial)."""
    rows, cols = x.shape
    br, bc = min(block[0], rows), min(block[1], cols)
    nr, nc = -(-rows // br), -(-cols // bc)
    padded = F.pad(x.float(), (0, nc * bc - cols, 0, nr * br - rows)).view(nr, br, nc, bc)
    amax = padded.abs().amax(dim=(1, 3))  # [nr, nc]
    scale = amax.clamp(min=torch.finfo(torch.float32).tiny) / E4M3_MAX
    # clamp: a value rounded just above 448 would become NaN (E4M3 has no infinity)
    data = (padded / scale[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return Scaled(data.view(nr * br, nc * bc)[:rows, :cols], scale, (br, bc))


def quantise_per_tensor(x: torch.Tensor) -> Scaled:
    return quantise(x, tuple(x.shape))


def _column_major(t: torch.Tensor) -> torch.Tensor:
    """CUDA's _scaled_mm wants its second operand column-major; the CPU kernel takes any layout."""
    return t.t().contiguous().t() if t.is_cuda and t.stride(0) != 1 else t


def scaled_matmul(a: Scaled, b: Scaled) -> torch.Tensor:
    """a [M, K] @ b [K, N] -> FP32 [M, N] with torch._scaled_mm.

    Both per-tensor: one tensor-wise call. Otherwise a's block along K must equal b's: one
    row-wise call per K-slice (a's scale per row, b's per column), summed in FP32.
    """
    out = torch.float32
    if a.scale.numel() == 1 and b.scale.numel() == 1:
        return torch._scaled_mm(a.data, _column_major(b.data), scale_a=a.scale.reshape(()),
                                scale_b=b.scale.reshape(()), out_dtype=out)
    k = a.block[1]
    if b.block[0] != k:
        raise ValueError(f"blocks along K differ: a {a.block}, b {b.block}")
    (M, K), N = a.data.shape, b.data.shape[1]
    row_scale = a.scale.repeat_interleave(a.block[0], 0)[:M]  # [M, K/k]
    col_scale = b.scale.repeat_interleave(b.block[1], 1)[:, :N]  # [K/k, N]
    total = torch.zeros(M, N, dtype=out, device=a.data.device)
    for i, start in enumerate(range(0, K, k)):
        total += torch._scaled_mm(a.data[:, start:start + k], _column_major(b.data[start:start + k]),
                                  scale_a=row_scale[:, i:i + 1].contiguous(),
                                  scale_b=col_scale[i:i + 1].contiguous(), out_dtype=out)
    return total


@dataclass(frozen=True)
class FP8Recipe:
    """How the three GEMMs scale their operands: "tensorwise" (one scale per tensor) or
    "blockwise" (V3: 1 x tile activation/gradient tiles, tile x tile weight blocks)."""
    scaling: Literal["tensorwise", "blockwise"] = "blockwise"
    tile: int = TILE

    def __post_init__(self) -> None:
        if self.scaling not in ("tensorwise", "blockwise"):
            raise ValueError(f"scaling must be 'tensorwise' or 'blockwise', not {self.scaling!r}")

    def activation(self, x: torch.Tensor, contraction_dim: int) -> Scaled:
        """x [R, C] tiled along its contraction dimension (1: per row, 0: per column)."""
        if self.scaling == "tensorwise":
            return quantise_per_tensor(x)
        return quantise(x, (1, self.tile) if contraction_dim == 1 else (self.tile, 1))

    def weight(self, w: torch.Tensor) -> Scaled:
        return quantise_per_tensor(w) if self.scaling == "tensorwise" else quantise(w, (self.tile, self.tile))


class _FP8Matmul(torch.autograd.Function):
    """y = x W^T with fprop, dgrad and wgrad in FP8 (x [M, K], W [N, K])."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, recipe: FP8Recipe) -> torch.Tensor:
        xq, wq = recipe.activation(x, 1), recipe.weight(weight)
        ctx.save_for_backward(xq.data, xq.scale, wq.data, wq.scale)  # FP8 activations kept
        ctx.blocks, ctx.recipe = (xq.block, wq.block), recipe
        return scaled_matmul(xq, wq.t())

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x_data, x_scale, w_data, w_scale = ctx.saved_tensors
        recipe, dy = ctx.recipe, dy.float()
        wq = Scaled(w_data, w_scale, ctx.blocks[1])
        dx = scaled_matmul(recipe.activation(dy, 1), wq)  # dgrad: contracts N
        x = Scaled(x_data, x_scale, ctx.blocks[0]).dequantise()
        dw = scaled_matmul(recipe.activation(dy.t(), 1), recipe.activation(x, 0))  # wgrad: contracts M
        return dx, dw, None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, recipe: FP8Recipe) -> torch.Tensor:
    """F.linear with its GEMMs in FP8: x [..., K], weight [N, K] -> FP32 [..., N]."""
    y = _FP8Matmul.apply(x.reshape(-1, x.size(-1)), weight, recipe).view(*x.shape[:-1], weight.size(0))
    return y if bias is None else y + bias


class FP8Linear(nn.Linear):
    """An nn.Linear whose GEMMs run in FP8; the weight and bias stay the FP32 master parameters."""

    recipe: FP8Recipe

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: FP8Recipe) -> "FP8Linear":
        """Wrap ``linear``'s own parameters (the optimizer's references stay valid)."""
        fp8 = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        fp8.weight, fp8.bias, fp8.recipe = linear.weight, linear.bias, recipe
        return fp8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias, self.recipe)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fp8={self.recipe.scaling}, tile={self.recipe.tile}"


def fp8_exclusion(name: str, excluded: dict[str, str] = FP8_EXCLUDED) -> str | None:
    """Why the Linear called ``name`` stays in high precision, or None when it goes to FP8."""
    return next((why for pattern, why in excluded.items() if re.search(pattern, name)), None)


def apply_fp8(model: nn.Module, recipe: FP8Recipe, excluded: dict[str, str] = FP8_EXCLUDED) -> dict[str, str]:
    """Swap every nn.Linear of ``model`` for an FP8Linear in place, except the excluded ones.

    Applied from outside (the model stays plain). Returns qualified name -> "fp8" or the reason it
    was kept. The routed experts' stacked weights (F.grouped_mm, no nn.Linear) stay FP32 here.
    """
    decisions: dict[str, str] = {}
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear:
            continue
        why = fp8_exclusion(name, excluded)
        decisions[name] = why or "fp8"
        if why is None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, FP8Linear.from_linear(module, recipe))
    return decisions


def scaled_mm_support(device: torch.device | str = "cpu", m: int = 32, k: int = 256, n: int = 256) -> list[dict[str, str]]:
    """Which scale layouts torch._scaled_mm / F.scaled_mm accept on ``device``: one row per
    layout with "ok" or the error's first line (what this module's GEMM can rely on)."""
    device = torch.device(device)
    a = torch.randn(m, k, device=device).to(E4M3)
    b = torch.randn(n, k, device=device).to(E4M3).t()  # column-major, as CUDA requires
    ones = lambda *shape: torch.ones(*shape, device=device)  # noqa: E731
    kind = F.ScalingType
    layouts = {
        "tensor-wise (singletons)": lambda: torch._scaled_mm(a, b, scale_a=ones(()), scale_b=ones(()),
                                                             out_dtype=torch.float32),
        "row-wise (a [M,1], b [1,N])": lambda: torch._scaled_mm(a, b, scale_a=ones(m, 1), scale_b=ones(1, n),
                                                                out_dtype=torch.float32),
        "block-wise 1x128 x 128x128 (_scaled_mm)": lambda: torch._scaled_mm(
            a, b, scale_a=ones(m, k // TILE), scale_b=ones(k // TILE, n // TILE), out_dtype=torch.float32),
        "block-wise 1x128 x 128x128 (F.scaled_mm)": lambda: F.scaled_mm(
            a, b, ones(m, k // TILE), kind.BlockWise1x128, ones(n // TILE, k // TILE), kind.BlockWise128x128,
            output_dtype=torch.float32),
    }
    rows = []
    for name, call in layouts.items():
        try:
            call()
            rows.append({"scales": name, "device": str(device), "result": "ok"})
        except (RuntimeError, ValueError, NotImplementedError) as error:
            rows.append({"scales": name, "device": str(device), "result": " ".join(str(error).split())[:200]})
    return rows

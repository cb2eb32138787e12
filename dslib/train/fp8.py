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

The routed experts (V3 runs them in FP8 too) are the same three GEMMs per expert on its
contiguous slice of the tokens sorted by expert, with the weights stored [K, N] per expert
(gate_up [E, d, 2 ff], down [E, ff, d]): x tiled 1 x 128 per token, each expert's weight in
its own 128 x 128 blocks, wgrad tiled along that expert's tokens (a slice of any length; an
expert without tokens gets a zero gradient). torch 2.13 has grouped scaled GEMMs
(torch._scaled_grouped_mm, F.scaled_grouped_mm) but no CPU kernel for them
(NotImplementedError, `scaled_mm_support`); torch._scaled_grouped_mm's shape checks (its meta
kernel, which mirrors the CUDA one) allow row-wise scales and a BF16 output only, which would
round each 128-wide K-slice to BF16 before the FP32 promotion. The grouped FP8 GEMM here is
``scaled_matmul`` per expert instead: the real FP8 op, one call per expert and K-slice.
Per-tensor scaling gives the whole sorted activation one scale and the stacked weight one (in
wgrad, each expert's slice one: the operands of its own GEMM).
"""
from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dslib.model.moe import RoutedExperts

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
    """An FP8 matrix, or a stack of them, with FP32 scales: data [..., R, C] ~ x / scale, one
    scale per ``block`` of each matrix (scale [..., ceil(R / block_rows), ceil(C / block_cols)])."""
    data: torch.Tensor
    scale: torch.Tensor
    block: tuple[int, int]

    def dequantise(self) -> torch.Tensor:
        rows, cols = self.data.shape[-2:]
        scale = self.scale.repeat_interleave(self.block[0], -2).repeat_interleave(self.block[1], -1)
        return self.data.float() * scale[..., :rows, :cols]

    def t(self) -> "Scaled":
        """The transpose: a block scale transposes with its block, nothing is re-quantised."""
        return Scaled(self.data.mT, self.scale.mT, (self.block[1], self.block[0]))

    def __getitem__(self, index: int) -> "Scaled":
        """Matrix ``index`` of a stack (one expert's weight)."""
        return Scaled(self.data[index], self.scale[index], self.block)

    def rows(self, start: int, stop: int) -> "Scaled":
        """Rows start:stop of a matrix scaled per row tile (block 1 x C) or per tensor."""
        if self.block[0] == 1:
            return Scaled(self.data[start:stop], self.scale[start:stop], self.block)
        if self.scale.size(0) == 1:
            return Scaled(self.data[start:stop], self.scale, self.block)
        raise ValueError(f"rows of {self.block} blocks would split a block")


def quantise(x: torch.Tensor, block: tuple[int, int]) -> Scaled:
    """x [..., R, C] (any float) -> E4M3 data with one scale per block of each matrix (edge
    blocks may be partial; an empty matrix gives empty data)."""
    *lead, rows, cols = x.shape
    br, bc = max(1, min(block[0], rows)), max(1, min(block[1], cols))
    nr, nc = -(-rows // br), -(-cols // bc)
    padded = F.pad(x.float(), (0, nc * bc - cols, 0, nr * br - rows)).view(*lead, nr, br, nc, bc)
    amax = padded.abs().amax(dim=(-3, -1))  # [..., nr, nc]
    scale = amax.clamp(min=torch.finfo(torch.float32).tiny) / E4M3_MAX
    # clamp: a value rounded just above 448 would become NaN (E4M3 has no infinity)
    data = (padded / scale[..., :, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return Scaled(data.view(*lead, nr * br, nc * bc)[..., :rows, :cols], scale, (br, bc))


def quantise_per_tensor(x: torch.Tensor) -> Scaled:
    """One scale for all of x, a matrix or a stack [..., R, C] (each matrix one block of that scale)."""
    if x.dim() == 2:
        return quantise(x, tuple(x.shape))
    flat = quantise(x.flatten(0, -2), (x.numel() // x.size(-1), x.size(-1)))
    return Scaled(flat.data.view(x.shape), flat.scale.expand(*x.shape[:-2], 1, 1), tuple(x.shape[-2:]))


def _column_major(t: torch.Tensor) -> torch.Tensor:
    """CUDA's _scaled_mm wants its second operand column-major; the CPU kernel takes any layout."""
    return t.t().contiguous().t() if t.is_cuda and t.stride(0) != 1 else t


def scaled_matmul(a: Scaled, b: Scaled) -> torch.Tensor:
    """a [M, K] @ b [K, N] -> FP32 [M, N] with torch._scaled_mm.

    Both per-tensor on CUDA: one tensor-wise call. Otherwise a's block along K must equal b's:
    one row-wise call per K-slice (a's scale per row, b's per column), summed in FP32. On CPU
    per-tensor scales go in as row-wise ones (one slice, the same products): torch 2.13's CPU
    kernel for singleton scales is a slow path, 20-50x the row-wise call on the same data here.
    """
    out = torch.float32
    if a.scale.numel() == 1 and b.scale.numel() == 1 and a.data.is_cuda:
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


def grouped_scaled_matmul(a: Scaled, b: Scaled, sizes: list[int]) -> torch.Tensor:
    """Rows of a [A, K] grouped by expert (the first sizes[0] rows for expert 0, ...) times that
    expert's b[e] [K, N] (b a stack [E, K, N]) -> FP32 [A, N]: one ``scaled_matmul`` per expert
    on its contiguous slice (torch 2.13 has no CPU kernel for _scaled_grouped_mm). ``a`` is
    scaled per row tile or per tensor, so a slice keeps its scales."""
    starts = [0, *itertools.accumulate(sizes)]
    return torch.cat([scaled_matmul(a.rows(starts[e], starts[e + 1]), b[e]) for e in range(len(sizes))])


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
        """A weight [N, K], or a stack of expert weights [E, K, N] (blocks per expert; per-tensor: one scale for the stack)."""
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


class _FP8GroupedMatmul(torch.autograd.Function):
    """y[rows of e] = x[rows of e] W[e] with fprop, dgrad and wgrad in FP8 (x [A, K] sorted by
    expert, sizes[e] rows each; W [E, K, N], stored [K, N] per expert, unlike nn.Linear's [N, K])."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, sizes: list[int], recipe: FP8Recipe) -> torch.Tensor:
        xq, wq = recipe.activation(x, 1), recipe.weight(weight)  # 1 x 128 per token; 128 x 128 per expert
        ctx.save_for_backward(xq.data, xq.scale, wq.data, wq.scale)  # FP8 activations kept
        ctx.blocks, ctx.sizes, ctx.recipe = (xq.block, wq.block), sizes, recipe
        return grouped_scaled_matmul(xq, wq, sizes)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        x_data, x_scale, w_data, w_scale = ctx.saved_tensors
        recipe, sizes, dy = ctx.recipe, ctx.sizes, dy.float()
        wq = Scaled(w_data, w_scale, ctx.blocks[1])
        dx = grouped_scaled_matmul(recipe.activation(dy, 1), wq.t(), sizes)  # dgrad: contracts N
        x = Scaled(x_data, x_scale, ctx.blocks[0]).dequantise()
        # wgrad contracts each expert's own tokens: tiles along its slice (an empty slice gives zeros)
        dw = torch.stack([scaled_matmul(recipe.activation(x_e.t(), 1), recipe.activation(dy_e, 0))
                          for x_e, dy_e in zip(x.split(sizes), dy.split(sizes))])
        return dx, dw, None, None


def fp8_grouped_matmul(x: torch.Tensor, weight: torch.Tensor, sizes: list[int], recipe: FP8Recipe) -> torch.Tensor:
    """F.grouped_mm with its GEMMs in FP8: x [A, K] sorted by expert (sizes [E] rows each),
    weight [E, K, N] -> FP32 [A, N]."""
    return _FP8GroupedMatmul.apply(x, weight, sizes, recipe)


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


class FP8RoutedExperts(RoutedExperts):
    """RoutedExperts whose two stacked GEMMs (gate_up, down) run in FP8; the stacked weights stay
    the FP32 master parameters. The FP8 GEMM runs per expert on any device and dtype, so both
    dispatches ("grouped_mm" and "loop") take it."""

    recipe: FP8Recipe

    def _grouped(self, xs: torch.Tensor, gates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        sizes = counts.tolist()  # one host sync for the slice sizes
        h = fp8_grouped_matmul(xs, self.gate_up, sizes, self.recipe)  # [A, 2 ff]
        return fp8_grouped_matmul(self._activation(h, gates), self.down, sizes, self.recipe)

    def _loop(self, xs: torch.Tensor, gates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return self._grouped(xs, gates, counts)

    def extra_repr(self) -> str:
        return f"fp8={self.recipe.scaling}, tile={self.recipe.tile}"


@functools.cache
def _fp8_experts_class(cls: type[RoutedExperts]) -> type[RoutedExperts]:
    """FP8RoutedExperts for RoutedExperts; for a subclass that keeps the call to _grouped/_loop
    (expert parallel's shard, whose forward adds the all-to-alls) the same override over it."""
    return FP8RoutedExperts if cls is RoutedExperts else type(f"FP8{cls.__name__}", (FP8RoutedExperts, cls), {})


def fp8_experts(experts: RoutedExperts, recipe: FP8Recipe) -> RoutedExperts:
    """``experts`` itself, its class swapped for the FP8 one: the same module and Parameters
    (an optimizer's references stay valid), its sharding attributes kept."""
    experts.__class__ = _fp8_experts_class(type(experts))
    experts.recipe = recipe
    return experts


def fp8_exclusion(name: str, excluded: dict[str, str] = FP8_EXCLUDED) -> str | None:
    """Why the GEMM module (a Linear, or routed experts) called ``name`` stays in high precision,
    or None when it goes to FP8."""
    return next((why for pattern, why in excluded.items() if re.search(pattern, name)), None)


def apply_fp8(model: nn.Module, recipe: FP8Recipe, excluded: dict[str, str] = FP8_EXCLUDED) -> dict[str, str]:
    """Swap every nn.Linear of ``model`` for an FP8Linear, and turn every RoutedExperts (its two
    stacked GEMMs) into FP8 ones, in place, except the excluded ones.

    Applied from outside (the model stays plain). Returns qualified name -> "fp8" or the reason it
    was kept. Expert parallel: apply it after dslib.parallel.expert.parallelize_experts (which
    builds new, plain shards from the experts it finds); each shard then runs its experts in FP8.
    """
    decisions: dict[str, str] = {}
    for name, module in list(model.named_modules()):
        is_experts = isinstance(module, RoutedExperts) and not isinstance(module, FP8RoutedExperts)
        if type(module) is not nn.Linear and not is_experts:
            continue
        why = fp8_exclusion(name, excluded)
        decisions[name] = why or "fp8"
        if why is not None:
            continue
        if is_experts:
            fp8_experts(module, recipe)
        else:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, FP8Linear.from_linear(module, recipe))
    return decisions


def scaled_mm_support(device: torch.device | str = "cpu", m: int = 32, k: int = 256, n: int = 256,
                      experts: int = 2) -> list[dict[str, str]]:
    """Which scale layouts torch._scaled_mm / F.scaled_mm, and their grouped forms
    torch._scaled_grouped_mm / F.scaled_grouped_mm (a [m, k] in ``experts`` slices of rows times
    b [experts, k, n]; BF16 output, the only one torch._scaled_grouped_mm's checks allow), accept on ``device``: one row per
    layout with "ok" or the error's first line (what this module's GEMMs can rely on)."""
    device = torch.device(device)
    a = torch.randn(m, k, device=device).to(E4M3)
    b = torch.randn(n, k, device=device).to(E4M3).t()  # column-major, as CUDA requires
    stacked = torch.randn(experts, n, k, device=device).to(E4M3).mT  # [E, k, n], column-major
    offs = torch.arange(1, experts + 1, device=device, dtype=torch.int32) * (m // experts)  # slice ends
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
        "grouped row-wise (a [M], b [E,N]) (_scaled_grouped_mm)": lambda: torch._scaled_grouped_mm(
            a, stacked, scale_a=ones(m), scale_b=ones(experts, n), offs=offs, out_dtype=torch.bfloat16),
        "grouped row-wise (F.scaled_grouped_mm)": lambda: F.scaled_grouped_mm(
            a, stacked, ones(m), kind.RowWise, ones(experts, n), kind.RowWise, offs=offs, output_dtype=torch.bfloat16),
        "grouped block-wise 1x128 x 128x128 (F.scaled_grouped_mm)": lambda: F.scaled_grouped_mm(
            a, stacked, ones(m, k // TILE), kind.BlockWise1x128, ones(experts, n // TILE, k // TILE),
            kind.BlockWise128x128, offs=offs, output_dtype=torch.bfloat16),
    }
    rows = []
    for name, call in layouts.items():
        try:
            call()
            rows.append({"scales": name, "device": str(device), "result": "ok"})
        except (RuntimeError, ValueError, NotImplementedError) as error:
            rows.append({"scales": name, "device": str(device), "result": " ".join(str(error).split())[:200]})
    return rows

"""FP8 with fine-grained scaling: E4M3's rounding bound per tile, exact round trips, scale shapes,
per-tensor against fine-grained scaling with an outlier, the FP8 GEMM (torch._scaled_mm) against
FP32 under a derived bound, FP8Linear's gradients, apply_fp8's exclusions, training steps."""
import pytest
import torch
from torch import nn

from dslib.model import build_model, load_deepseek_config
from dslib.train import OptimizerStepper, train_step
from dslib.train.fp8 import (E4M3, E4M3_MAX, E4M3_MIN_NORMAL, E4M3_RELATIVE_ERROR, E4M3_SUBNORMAL_ERROR,
                             FP8Linear, FP8Recipe, Scaled, apply_fp8, fp8_linear, quantise, quantise_per_tensor,
                             scaled_matmul)

BLOCKWISE, TENSORWISE = FP8Recipe("blockwise"), FP8Recipe("tensorwise")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _element_bound(q: Scaled, x: torch.Tensor) -> torch.Tensor:
    """E4M3's rounding bound per element: 2^-4 |x| for normal values, 2^-10 s below 2^-6 s."""
    scale = Scaled(torch.ones_like(q.data, dtype=torch.float32), q.scale, q.block).dequantise()
    return torch.where(x.abs() >= E4M3_MIN_NORMAL * scale, E4M3_RELATIVE_ERROR * x.abs(), E4M3_SUBNORMAL_ERROR * scale)


def _wide_range(rows: int, cols: int) -> torch.Tensor:
    """Gaussian values whose magnitude changes by up to 10^+-4 from one 1x128 tile to the next."""
    tiles = -(-cols // 128)
    magnitude = 10.0 ** torch.empty(rows, tiles).uniform_(-4, 4)
    return torch.randn(rows, cols) * magnitude.repeat_interleave(128, 1)[:, :cols]


def test_tile_round_trip_is_within_e4m3_bound_and_really_rounds():
    x = _wide_range(40, 300)  # 300 = two full tiles and a partial one
    q = BLOCKWISE.activation(x, 1)
    assert q.data.dtype == E4M3
    error = (q.dequantise() - x).abs()
    assert (error <= _element_bound(q, x) * (1 + 1e-6)).all()
    # per tile, relative to its amax, at most half the spacing (32) of E4M3's top binade over 448
    tile_error = (error.view(40, -1).split(128, 1))
    tile_amax = x.abs().split(128, 1)
    assert max((e.amax(1) / a.amax(1)).max().item() for e, a in zip(tile_error, tile_amax)) <= 16 / E4M3_MAX * (1 + 1e-6)
    normal = x.abs() >= E4M3_MIN_NORMAL * _element_bound(q, x).div(E4M3_SUBNORMAL_ERROR)
    assert (error[normal] / x.abs()[normal]).max() > 2.0**-6  # 3 mantissa bits: real rounding happened


def test_values_that_are_e4m3_numbers_times_the_scale_come_back_exactly():
    codes = torch.randint(0, 256, (16, 256), dtype=torch.uint8).view(E4M3).float()
    codes = codes.nan_to_num(0.0)  # 0x7f / 0xff are E4M3's NaN
    codes[:, 0], codes[:, 128] = E4M3_MAX, -E4M3_MAX  # each tile's amax is 448 x 2^k: scale = 2^k
    powers = 2.0 ** torch.randint(-20, 20, (16, 2)).float()
    x = codes * powers.repeat_interleave(128, 1)
    q = BLOCKWISE.activation(x, 1)
    assert torch.equal(q.scale, powers)
    assert torch.equal(q.dequantise(), x)


def test_scale_shapes_of_each_granularity():
    x, w = torch.randn(130, 300), torch.randn(200, 300)
    assert BLOCKWISE.activation(x, 1).scale.shape == (130, 3)  # per token, per 128 channels
    assert BLOCKWISE.activation(x, 0).scale.shape == (2, 300)  # per channel, per 128 tokens (wgrad)
    assert BLOCKWISE.weight(w).scale.shape == (2, 3)  # 128 x 128 blocks
    assert BLOCKWISE.weight(w).t().scale.shape == (3, 2)
    assert TENSORWISE.activation(x, 1).scale.shape == TENSORWISE.weight(w).scale.shape == (1, 1)
    assert FP8Recipe("blockwise", tile=32).activation(x, 1).scale.shape == (130, 10)
    zeros = quantise(torch.zeros(4, 256), (1, 128))
    assert torch.equal(zeros.dequantise(), torch.zeros(4, 256))  # an all-zero tile: no NaN
    with pytest.raises(ValueError, match="scaling must be"):
        FP8Recipe("rowwise")


def test_an_outlier_spoils_per_tensor_scaling_but_only_its_own_tile_when_fine_grained():
    clean = torch.randn(64, 512)
    x = clean.clone()
    x[5, 300] = 1e6  # per-tensor: the rest sits below 2^-6 of the scale, subnormal, few bits left
    outside = torch.ones_like(x, dtype=torch.bool)
    outside[5, 256:384] = False  # the outlier's 1 x 128 tile

    def error(q: Scaled) -> float:
        return ((q.dequantise() - x)[outside].norm() / x[outside].norm()).item()

    per_tensor, fine = error(quantise_per_tensor(x)), error(BLOCKWISE.activation(x, 1))
    assert fine < E4M3_RELATIVE_ERROR
    assert per_tensor > 10 * fine
    # the other tiles never see the outlier: bit for bit what they are without it
    assert torch.equal(BLOCKWISE.activation(x, 1).dequantise()[outside],
                       BLOCKWISE.activation(clean, 1).dequantise()[outside])


def _product_bound(a: Scaled, b: Scaled, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|x_hat y_hat - x y| <= e_x |y| + |x| e_y + e_x e_y summed over K, e = each element's bound."""
    ex, ey = _element_bound(a, x), _element_bound(b, y)
    return ex @ y.abs() + x.abs() @ ey + ex @ ey


@pytest.mark.parametrize("recipe", [BLOCKWISE, TENSORWISE], ids=["blockwise", "tensorwise"])
def test_fp8_matmul_is_the_dequantised_product_and_within_the_bound_of_fp32(recipe):
    x, w = torch.randn(150, 300), torch.randn(200, 300) * 0.05
    xq, wq = recipe.activation(x, 1), recipe.weight(w)
    out = scaled_matmul(xq, wq.t())
    dequantised = xq.dequantise() @ wq.dequantise().t()
    torch.testing.assert_close(out, dequantised, rtol=1e-5, atol=1e-5)  # the scales are applied right
    exact = x @ w.t()
    fp32_rounding = 1e-5 * (x.abs() @ w.abs().t())
    assert ((out - exact).abs() <= _product_bound(xq, wq.t(), x, w.t()) + fp32_rounding).all()
    assert (out - exact).norm() / exact.norm() < 0.05  # the stated tolerance: 5% relative (Frobenius)


def test_blockwise_matmul_refuses_mismatched_blocks():
    a, b = quantise(torch.randn(8, 256), (1, 128)), quantise(torch.randn(256, 8), (64, 1))
    with pytest.raises(ValueError, match="blocks along K differ"):
        scaled_matmul(a, b)


@pytest.mark.parametrize("recipe", [BLOCKWISE, TENSORWISE], ids=["blockwise", "tensorwise"])
def test_fp8_linear_gradients_are_the_three_fp8_gemms_and_close_to_fp32(recipe):
    x = torch.randn(3, 50, 300, requires_grad=True)  # 150 tokens: a partial 128-token tile in wgrad
    w = (torch.randn(200, 300) * 0.05).requires_grad_()
    bias = torch.randn(200, requires_grad=True)
    dy = torch.randn(3, 50, 200)
    grads_fp8 = torch.autograd.grad(fp8_linear(x, w, bias, recipe), (x, w, bias), dy)
    grads_fp32 = torch.autograd.grad(nn.functional.linear(x, w, bias), (x, w, bias), dy)
    for fp8, fp32 in zip(grads_fp8, grads_fp32):
        assert (fp8 - fp32).norm() / fp32.norm() < 0.06
    # dgrad and wgrad are the FP8 products of the quantised operands (x re-quantised along tokens)
    dy2, x2 = dy.reshape(150, 200), x.detach().reshape(150, 300)
    wq = recipe.weight(w.detach())
    dx = recipe.activation(dy2, 1).dequantise() @ wq.dequantise()
    torch.testing.assert_close(grads_fp8[0].reshape(150, 300), dx, rtol=1e-5, atol=1e-5)
    x_cached = recipe.activation(x2, 1).dequantise()
    dw = recipe.activation(dy2.t(), 1).dequantise() @ recipe.activation(x_cached, 0).dequantise()
    torch.testing.assert_close(grads_fp8[1], dw, rtol=1e-5, atol=1e-5)


def test_apply_fp8_converts_the_gemms_and_leaves_the_excluded_modules_alone():
    model = build_model(load_deepseek_config("deepseek_tiny"), seed=0)
    before = {name: m for name, m in model.named_modules()}
    weights = {name: p for name, p in model.named_parameters()}
    decisions = apply_fp8(model, BLOCKWISE)
    assert decisions["head"].startswith("output head")
    assert model.head is before["head"] and type(model.head) is nn.Linear
    for name in ("embed", "norm", "blocks.1.ffn.router", "blocks.0.attn_norm", "blocks.1.ffn.experts"):
        assert model.get_submodule(name) is before[name]
    for name in ("blocks.0.attn.q_down", "blocks.0.attn.o_proj", "blocks.0.ffn.gate_up", "blocks.1.ffn.shared.down"):
        assert decisions[name] == "fp8" and isinstance(model.get_submodule(name), FP8Linear)
    assert [n for n, d in decisions.items() if d != "fp8"] == ["head"]
    # the same Parameter objects: an optimizer built before the conversion still updates them
    assert all(p is weights[name] for name, p in model.named_parameters())


@pytest.mark.parametrize("recipe", [BLOCKWISE, TENSORWISE], ids=["blockwise", "tensorwise"])
def test_fp8_training_steps_lower_the_loss_like_fp32(recipe):
    config = load_deepseek_config("deepseek_tiny")
    batch = (torch.randint(0, config.vocab_size, (4, 32)),) * 2
    batch = (batch[0], batch[0].roll(-1, 1))
    losses = {}
    for name in ("fp32", "fp8"):
        model = build_model(config, seed=0)
        if name == "fp8":
            apply_fp8(model, recipe)
        stepper = OptimizerStepper(torch.optim.AdamW(model.parameters(), lr=3e-3))
        losses[name] = [train_step(model, batch, stepper).loss.item() for _ in range(6)]
    assert losses["fp8"][-1] < losses["fp8"][0] - 0.1
    assert abs(losses["fp8"][0] - losses["fp32"][0]) / losses["fp32"][0] < 0.01
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_study_loss_gaps_pair_seeds_and_layer_errors_respect_the_tile_bound():
    from dslib.studies.fp8_study import ModeRun, layer_errors, loss_gaps, outlier_sweep
    runs = [ModeRun("bf16", 0, [5.0, 4.0]), ModeRun("fp8_blockwise", 0, [5.0, 4.04]),
            ModeRun("bf16", 1, [5.0, 2.0]), ModeRun("fp8_blockwise", 1, [5.0, 1.99])]
    (gap,) = loss_gaps(runs, references=("bf16",), window=1)
    assert gap["gaps"] == [0.01, -0.005] and gap["mean_gap"] == pytest.approx(0.0025)
    model = build_model(load_deepseek_config("deepseek_tiny"), seed=0)
    idx = torch.randint(0, 512, (2, 32))
    rows = layer_errors(model, (idx, idx.roll(-1, 1)))
    converted = [n for n, d in apply_fp8(build_model(load_deepseek_config("deepseek_tiny")), BLOCKWISE).items()
                 if d == "fp8"]
    assert sorted({r["layer"] for r in rows}) == sorted(converted)
    assert {r["tensor"] for r in rows} == {"activation", "gradient", "weight"}
    assert max(r["worst_tile_error"] for r in rows) <= 16 / E4M3_MAX * (1 + 1e-6)
    small, large = outlier_sweep([1.0, 1e6])
    assert large["per_tensor_error"] > 10 * large["fine_grained_error"]
    assert large["fine_grained_error"] == pytest.approx(small["fine_grained_error"])

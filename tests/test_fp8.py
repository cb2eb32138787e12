"""FP8 with fine-grained scaling: E4M3's rounding bound per tile, exact round trips, scale shapes,
per-tensor against fine-grained scaling with an outlier, the FP8 GEMM (torch._scaled_mm) against
FP32 under a derived bound, FP8Linear's gradients, the routed experts' grouped FP8 GEMM and its
gradients against F.grouped_mm, apply_fp8's exclusions (plain and expert-parallel), training steps."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dslib.model import build_model, load_deepseek_config
from dslib.model.moe import RoutedExperts
from dslib.train import OptimizerStepper, train_step
from dslib.train.fp8 import (E4M3, E4M3_MAX, E4M3_MIN_NORMAL, E4M3_RELATIVE_ERROR, E4M3_SUBNORMAL_ERROR,
                             FP8Linear, FP8Recipe, FP8RoutedExperts, Scaled, apply_fp8, fp8_experts,
                             fp8_grouped_matmul, fp8_linear, quantise, quantise_per_tensor, scaled_matmul, scaled_mm_support)

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
    for name in ("embed", "norm", "blocks.1.ffn.router", "blocks.0.attn_norm"):
        assert model.get_submodule(name) is before[name] and type(before[name]) is type(model.get_submodule(name))
    for name in ("blocks.0.attn.q_down", "blocks.0.attn.o_proj", "blocks.0.ffn.gate_up", "blocks.1.ffn.shared.down"):
        assert decisions[name] == "fp8" and isinstance(model.get_submodule(name), FP8Linear)
    for name in ("blocks.1.ffn.experts", "mtp.0.block.ffn.experts"):  # the routed experts of both MoE layers
        assert decisions[name] == "fp8" and type(model.get_submodule(name)) is FP8RoutedExperts
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
    assert all(torch.isfinite(torch.tensor(losses["fp8"])))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(isinstance(m, FP8RoutedExperts) for m in model.modules()) == 2  # the experts trained in FP8


def test_study_loss_gaps_pair_seeds_and_layer_errors_respect_the_tile_bound():
    from dslib.studies.fp8_study import ModeRun, layer_errors, loss_gaps, outlier_sweep
    runs = [ModeRun("bf16", 0, [5.0, 4.0]), ModeRun("fp8_blockwise", 0, [5.0, 4.04]),
            ModeRun("bf16", 1, [5.0, 2.0]), ModeRun("fp8_blockwise", 1, [5.0, 1.99])]
    (gap,) = loss_gaps(runs, references=("bf16",), window=1)
    assert gap["gaps"] == [0.01, -0.005] and gap["mean_gap"] == pytest.approx(0.0025)
    model = build_model(load_deepseek_config("deepseek_tiny"), seed=0)
    idx = torch.randint(0, 512, (2, 32))
    rows = layer_errors(model, (idx, idx.roll(-1, 1)))
    fp8_model = build_model(load_deepseek_config("deepseek_tiny"))
    converted = [n for n, d in apply_fp8(fp8_model, BLOCKWISE).items() if d == "fp8"]
    experts = [n for n in converted if isinstance(fp8_model.get_submodule(n), FP8RoutedExperts)]
    assert len(experts) == 2  # one row per stacked GEMM of each
    assert sorted({r["layer"] for r in rows}) == sorted(
        [n for n in converted if n not in experts] + [f"{n}.{gemm}" for n in experts for gemm in ("gate_up", "down")])
    assert {r["shape"] for r in rows if r["layer"] == "blocks.1.ffn.experts.down" and r["tensor"] == "weight"} == {"8x32x64"}
    assert all(type(m) is RoutedExperts and not hasattr(m, "kept") for m in model.modules()
               if isinstance(m, RoutedExperts))  # the capture gave the experts back as they were
    assert {r["tensor"] for r in rows} == {"activation", "gradient", "weight"}
    assert max(r["worst_tile_error"] for r in rows) <= 16 / E4M3_MAX * (1 + 1e-6)
    small, large = outlier_sweep([1.0, 1e6])
    assert large["per_tensor_error"] > 10 * large["fine_grained_error"]
    assert large["fine_grained_error"] == pytest.approx(small["fine_grained_error"])


GROUP_SIZES = [150, 0, 37, 130]  # partial 128-token tiles in wgrad, and an expert without tokens


def _grouped_fp32(x: torch.Tensor, w: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    return F.grouped_mm(x, w, offs=torch.tensor(sizes).cumsum(0).to(torch.int32))


def test_torch_has_no_cpu_kernel_for_the_grouped_scaled_gemm():
    rows = {r["scales"]: r["result"] for r in scaled_mm_support("cpu")}
    grouped = {name: result for name, result in rows.items() if name.startswith("grouped")}
    assert len(grouped) == 3
    assert all("Could not run 'aten::_scaled_grouped_mm" in r and "'CPU' backend" in r for r in grouped.values())
    assert rows["row-wise (a [M,1], b [1,N])"] == "ok"  # what the per-expert FP8 GEMM is built from


@pytest.mark.parametrize("recipe", [BLOCKWISE, TENSORWISE], ids=["blockwise", "tensorwise"])
def test_grouped_fp8_matmul_is_each_experts_dequantised_product_within_the_bound_of_fp32(recipe):
    x, w = torch.randn(sum(GROUP_SIZES), 300), torch.randn(4, 300, 200) * 0.05  # weights [E, K, N]
    out = fp8_grouped_matmul(x, w, GROUP_SIZES, recipe)
    exact = _grouped_fp32(x, w, GROUP_SIZES)
    xq, wq = recipe.activation(x, 1), recipe.weight(w)
    assert wq.scale.shape == ((4, 3, 2) if recipe is BLOCKWISE else (4, 1, 1))  # 128 x 128 blocks per expert
    start = 0
    for e, n in enumerate(GROUP_SIZES):
        rows = slice(start, start + n)
        a, b = xq.rows(start, start + n), wq[e]
        torch.testing.assert_close(out[rows], a.dequantise() @ b.dequantise(), rtol=1e-5, atol=1e-5)
        fp32_rounding = 1e-5 * (x[rows].abs() @ w[e].abs())
        assert ((out[rows] - exact[rows]).abs() <= _product_bound(a, b, x[rows], w[e]) + fp32_rounding).all()
        start += n
    assert (out - exact).norm() / exact.norm() < 0.05  # the stated tolerance: 5% relative (Frobenius)


@pytest.mark.parametrize("recipe", [BLOCKWISE, TENSORWISE], ids=["blockwise", "tensorwise"])
def test_grouped_fp8_gradients_are_the_fp8_gemms_per_expert_and_close_to_fp32(recipe):
    x = torch.randn(sum(GROUP_SIZES), 300, requires_grad=True)
    w = (torch.randn(4, 300, 200) * 0.05).requires_grad_()
    dy = torch.randn(sum(GROUP_SIZES), 200)
    dx, dw = torch.autograd.grad(fp8_grouped_matmul(x, w, GROUP_SIZES, recipe), (x, w), dy)
    dx32, dw32 = torch.autograd.grad(_grouped_fp32(x, w, GROUP_SIZES), (x, w), dy)
    assert (dx - dx32).norm() / dx32.norm() < 0.06
    for e, n in enumerate(GROUP_SIZES):
        if n:
            assert (dw[e] - dw32[e]).norm() / dw32[e].norm() < 0.06
    assert torch.equal(dw[1], torch.zeros(300, 200))  # no tokens: a zero gradient, no NaN
    # dgrad per token tile with the forward's weight blocks; wgrad along each expert's tokens
    wq, dyq = recipe.weight(w.detach()), recipe.activation(dy, 1)  # per tensor: one scale for all of dy
    x_cached = recipe.activation(x.detach(), 1).dequantise()
    for (start, n), e in zip([(0, 150), (187, 130)], (0, 3)):
        dy_e, x_e = dy[start:start + n], x_cached[start:start + n]
        torch.testing.assert_close(dx[start:start + n], dyq.rows(start, start + n).dequantise() @ wq[e].t().dequantise(),
                                   rtol=1e-5, atol=1e-5)
        dw_e = recipe.activation(x_e.t(), 1).dequantise() @ recipe.activation(dy_e, 0).dequantise()
        torch.testing.assert_close(dw[e], dw_e, rtol=1e-5, atol=1e-5)


def test_grouped_fp8_matmul_without_any_token_gives_empty_outputs_and_zero_gradients():
    x, w = torch.randn(0, 64, requires_grad=True), torch.randn(4, 64, 32, requires_grad=True)
    y = fp8_grouped_matmul(x, w, [0, 0, 0, 0], BLOCKWISE)  # an expert-parallel rank nobody sends to
    y.sum().backward()
    assert y.shape == (0, 32) and x.grad.shape == (0, 64)
    assert torch.equal(w.grad, torch.zeros_like(w))


def _tiny_batch(config, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(seed))
    return idx, idx.roll(-1, 1)


def _expert_grads(model: nn.Module, batch) -> tuple[float, dict[str, torch.Tensor]]:
    idx, targets = batch
    out = model(idx, targets=targets)
    (out.loss + out.aux_loss).backward()
    return out.loss.item(), {n: p.grad for n, p in model.named_parameters() if ".experts." in n}


def test_fp8_experts_gradients_are_fp8_and_close_to_fp32_in_the_model():
    config = load_deepseek_config("deepseek_tiny")
    batch = _tiny_batch(config)
    loss32, grads32 = _expert_grads(build_model(config, seed=0), batch)
    fp8_model = build_model(config, seed=0)
    # only the experts in FP8: the routers see FP32's inputs and pick the same experts (with every
    # Linear in FP8 too, a few tokens flip experts and a small expert's gradient moves by ~30%)
    for module in fp8_model.modules():
        if type(module) is RoutedExperts:
            fp8_experts(module, BLOCKWISE)
    loss8, grads8 = _expert_grads(fp8_model, batch)
    assert abs(loss8 - loss32) / loss32 < 1e-3
    assert set(grads8) == set(grads32) == {f"{m}.ffn.experts.{w}" for m in ("blocks.1", "mtp.0.block")
                                           for w in ("gate_up", "down")}
    for name, g32 in grads32.items():
        g8 = grads8[name]
        routed = g32.flatten(1).abs().sum(1) > 0
        assert torch.equal(routed, g8.flatten(1).abs().sum(1) > 0)
        # an expert's wgrad carries about six E4M3 roundings (x, x along its tokens, dy and W_down of
        # the down dgrad, dh along its tokens, ...), each at most 2^-4 per element, about 2.6% RMS
        # (3.7% measured above for one GEMM's two): sqrt(6) x 2.6% = 6.4%, 6-7% measured; bound 10%
        for e in routed.nonzero().flatten().tolist():
            assert 0 < (g8[e] - g32[e]).norm() / g32[e].norm() < 0.1, (name, e)


@pytest.fixture
def single_rank_group(tmp_path):
    """A one-rank gloo group in this process: expert parallel with ep = 1 (its all-to-alls run)."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_apply_fp8_on_an_expert_parallel_model_runs_its_shards_in_fp8(single_rank_group):
    from dslib.parallel.expert import ExpertParallelExperts, parallelize_experts
    config = load_deepseek_config("deepseek_tiny")
    batch = _tiny_batch(config)
    plain = build_model(config, seed=0)
    apply_fp8(plain, BLOCKWISE)
    sharded = parallelize_experts(build_model(config, seed=0), single_rank_group)
    decisions = apply_fp8(sharded, BLOCKWISE)
    shard = sharded.get_submodule("blocks.1.ffn.experts")
    assert decisions["blocks.1.ffn.experts"] == "fp8"
    assert isinstance(shard, ExpertParallelExperts) and isinstance(shard, FP8RoutedExperts)
    assert shard.group is single_rank_group and shard.n_local == config.moe.n_routed_experts
    loss_plain, grads_plain = _expert_grads(plain, batch)
    loss_sharded, grads_sharded = _expert_grads(sharded, batch)
    # the shard applies the combine weight after the down GEMM, so its FP8 input differs by rounding
    assert abs(loss_sharded - loss_plain) / loss_plain < 1e-3
    for name, g in grads_plain.items():
        assert (grads_sharded[name] - g).norm() / g.norm() < 0.1


def test_expert_parallel_after_apply_fp8_is_refused(single_rank_group):
    """Sharding FP8 experts would build plain shards and silently drop FP8: refused, naming the order."""
    from dslib.parallel.expert import parallelize_experts
    model = build_model(load_deepseek_config("deepseek_tiny"), seed=0)
    apply_fp8(model, BLOCKWISE)
    with pytest.raises(TypeError, match="before apply_fp8"):
        parallelize_experts(model, single_rank_group)

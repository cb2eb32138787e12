"""DeepSeekMoE: dropless top-k routing, group limits, the balancing bias and the balance losses."""
import pytest
import torch
import torch.nn.functional as F

from dslib.model import DeepSeekModel, load_deepseek_config
from dslib.model.deepseek_config import MoEConfig
from dslib.model.moe import DeepSeekMoE, balance_loss, load_stats


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _layer(d=16, **overrides) -> DeepSeekMoE:
    config = MoEConfig(**{"n_routed_experts": 8, "top_k": 2, "moe_intermediate_size": 12, **overrides})
    layer = DeepSeekMoE(d, config)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return layer


def _reference(layer: DeepSeekMoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: the shared experts plus each selected expert's SwiGLU, by the affinities."""
    cfg, experts = layer.config, layer.experts
    out = []
    for token in x:
        logits = layer.router.weight @ token
        scores = logits.softmax(-1) if cfg.score_func == "softmax" else logits.sigmoid()
        chosen = layer.router(token[None]).experts[0]
        gates = scores[chosen] / (scores[chosen].sum() if cfg.norm_topk_prob else 1.0)
        y = layer.shared(token) if layer.shared is not None else torch.zeros_like(token)
        for e, g in zip(chosen.tolist(), gates * cfg.routed_scaling_factor):
            gate, up = (token @ experts.gate_up[e]).chunk(2)
            y = y + g * ((F.silu(gate) * up) @ experts.down[e])
        out.append(y)
    return torch.stack(out)


@torch.no_grad()
@pytest.mark.parametrize("dispatch", ["grouped_mm", "loop"])
@pytest.mark.parametrize("overrides", [
    {}, {"score_func": "softmax", "norm_topk_prob": False, "n_shared_experts": 2},
    {"n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5}, {"n_shared_experts": 0, "top_k": 3},
])
def test_moe_output_is_shared_plus_top_k_routed_experts(dispatch, overrides):
    layer = _layer(dispatch=dispatch, **overrides).eval()
    x = torch.randn(2, 7, 16)
    y, _, load = layer(x)
    torch.testing.assert_close(y.view(14, 16), _reference(layer, x.view(14, 16)), rtol=1e-4, atol=1e-5)
    assert int(load.sum()) == 14 * layer.config.top_k


@torch.no_grad()
def test_every_token_gets_k_distinct_experts_within_its_top_groups():
    layer = _layer(n_routed_experts=16, top_k=4, n_group=4, topk_group=2)
    experts = layer.router(torch.randn(200, 16)).experts
    assert experts.shape == (200, 4)
    assert all(len(set(row)) == 4 for row in experts.tolist())
    assert all(len({e // 4 for e in row}) <= 2 for row in experts.tolist())  # groups of 4 experts


@torch.no_grad()
def test_dropless_under_skew_and_what_capacity_would_drop():
    """Every token is computed even when one expert gets all of them; the stat says what a
    capacity factor of 1.25 would have dropped."""
    layer = _layer(n_shared_experts=0, top_k=1).eval()
    layer.router.bias[3] = 10.0  # every token picks expert 3
    x = torch.randn(40, 16)
    y, _, load = layer(x[None])
    assert load.tolist() == [0, 0, 0, 40, 0, 0, 0, 0]
    torch.testing.assert_close(y[0], _reference(layer, x), rtol=1e-4, atol=1e-5)
    stats = load_stats(load, capacity_factor=1.25)
    # capacity ceil(1.25 * 40 / 8) = 7 of the 40 assignments kept: 33 / 40 dropped
    assert float(stats["dropped_at_capacity"]) == pytest.approx(33 / 40)
    assert float(stats["maxvio"]) == pytest.approx(7.0)  # 40 / mean(5) - 1


def test_grouped_mm_and_loop_give_the_same_gradients():
    grads = {}
    for dispatch in ("grouped_mm", "loop"):
        torch.manual_seed(1)
        layer = _layer(dispatch=dispatch, aux_loss_alpha=0.1)
        x = torch.randn(3, 5, 16, requires_grad=True)
        y, aux, _ = layer(x)
        (y.pow(2).sum() + aux).backward()
        grads[dispatch] = [x.grad] + [p.grad for p in layer.parameters()]
    for a, b in zip(*grads.values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_bias_changes_selection_not_combine_weights():
    layer = _layer(n_shared_experts=0)
    x = torch.randn(64, 16)
    before = layer.router(x)
    layer.router.bias[5] = 1.0  # enough to pull expert 5 into most selections
    after = layer.router(x)
    assert (after.experts == 5).any(-1).float().mean() > (before.experts == 5).any(-1).float().mean() + 0.3
    scores = (x @ layer.router.weight.T).sigmoid()  # the unbiased affinities
    expected = scores.gather(1, after.experts)
    torch.testing.assert_close(after.weights, expected / expected.sum(-1, keepdim=True))
    unchanged = (before.experts.sort(-1).values == after.experts.sort(-1).values).all(-1)
    assert unchanged.any()
    torch.testing.assert_close(before.weights.sort(-1).values[unchanged], after.weights.sort(-1).values[unchanged])
    assert "router.bias" not in dict(layer.named_parameters()) and "router.bias" in layer.state_dict()


def _skewed_model_loads(gamma: float, steps: int = 40) -> tuple[list[float], torch.Tensor]:
    """Train the tiny model on fixed data with a router skewed towards expert 0 (a shared
    direction in every input), calling update_router_biases after each optimizer step.
    Returns MaxVio per step and the final bias of the skewed layer."""
    torch.manual_seed(0)
    model = DeepSeekModel(load_deepseek_config(
        "deepseek_tiny", num_layers=1, first_k_dense=0, mtp={"depth": 0},
        moe={"bias_update_speed": gamma, "seq_aux_loss_alpha": 0.0, "n_group": 1, "topk_group": 1}))
    router = model.blocks[0].ffn.router
    with torch.no_grad():  # every input shares a direction u that router row 0 is aligned with
        u = torch.nn.functional.normalize(torch.randn(router.weight.size(1)), dim=0)
        model.embed.weight += 0.2 * u
        router.weight[0] += 0.3 * u
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 512, (4, 32))
    maxvio = []
    for _ in range(steps):
        out = model(idx, targets=idx)
        opt.zero_grad()
        (out.loss + out.aux_loss).backward()
        opt.step()
        model.update_router_biases()
        maxvio.append(float(out.stats["moe_maxvio"]))
    return maxvio, router.bias.clone()


def test_bias_update_moves_a_skewed_router_towards_balance():
    frozen, frozen_bias = _skewed_model_loads(gamma=0.0)
    balanced, bias = _skewed_model_loads(gamma=0.01)
    assert frozen_bias.abs().max() == 0  # gamma 0: the bias never moves
    assert balanced[0] == pytest.approx(frozen[0]) and balanced[0] > 2.0  # same skewed start
    assert sum(balanced[-10:]) < 0.5 * sum(frozen[-10:])  # MaxVio falls only with the bias
    assert bias[0] == bias.min()  # the overloaded expert is pushed down, below all others


def test_balance_loss_is_one_when_balanced_and_e_over_k_at_worst():
    E, k, T = 8, 2, 16
    uniform = torch.full((1, T, E), 1.0 / E)
    round_robin = torch.arange(T * k).view(1, T, k) % E
    assert float(balance_loss(uniform, round_robin)) == pytest.approx(1.0)
    collapsed = torch.zeros(1, T, E)
    collapsed[..., :2] = 0.5
    assert float(balance_loss(collapsed, torch.tensor([0, 1]).expand(1, T, k))) == pytest.approx(E / k)


def test_sequence_wise_loss_sees_imbalance_inside_sequences():
    """Two sequences each sending everything to their own experts: balanced over the batch
    (batch-wise loss at its minimum), maximally unbalanced within each sequence."""
    E, k, T = 4, 2, 10
    experts = torch.stack([torch.tensor([0, 1]).expand(T, k), torch.tensor([2, 3]).expand(T, k)])
    scores = torch.zeros(2, T, E)
    scores[0, :, :2], scores[1, :, 2:] = 0.5, 0.5
    batch_wise = balance_loss(scores.view(1, 2 * T, E), experts.view(1, 2 * T, k))
    sequence_wise = balance_loss(scores, experts)
    assert float(batch_wise) == pytest.approx(1.0) and float(sequence_wise) == pytest.approx(E / k)


def test_auxiliary_loss_gradient_reaches_the_router_only_with_alpha():
    for alpha, expect in ((0.0, False), (0.1, True)):
        layer = _layer(aux_loss_alpha=alpha, score_func="softmax")
        _, aux, _ = layer(torch.randn(2, 8, 16))
        assert aux.requires_grad == expect
        if expect:
            aux.backward()
            assert layer.router.weight.grad.abs().sum() > 0

"""Lion against a per-element reference; its three code paths; DeepSpeed's CPU Lion op."""
import math

import pytest
import torch

from dslib.optim import ArticleSignAdam, Lion, state_bytes_per_param

SHAPES = [(3, 4), (5,), (2, 3, 2)]


def sign(x: float) -> float:
    return (x > 0) - (x < 0)


def reference_lion(params, grad_steps, lr, beta1, beta2, wd):
    """Per-element Lion with Python floats (float64), straight from the paper's Algorithm 2."""
    values = [p.flatten().tolist() for p in params]
    moments = [[0.0] * len(v) for v in values]
    for grads in grad_steps:
        for v, m, g in zip(values, moments, [g.flatten().tolist() for g in grads]):
            for i in range(len(v)):
                update = sign(beta1 * m[i] + (1 - beta1) * g[i])
                v[i] = v[i] * (1 - lr * wd) - lr * update
                m[i] = beta2 * m[i] + (1 - beta2) * g[i]
    return [torch.tensor(v, dtype=torch.float64).view(p.shape) for v, p in zip(values, params)]


def grad_sequence(n_steps: int, seed: int = 0):
    """Random gradients, with step 2 all zeros (only weight decay and momentum move)."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for step in range(n_steps):
        grads = [torch.randn(s, generator=gen) for s in SHAPES]
        steps.append([torch.zeros_like(g) for g in grads] if step == 2 else grads)
    return steps


def run_optimizer(make_opt, grad_steps, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    initial = [p.detach().clone() for p in params]
    opt = make_opt(params)
    for grads in grad_steps:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return initial, [p.detach() for p in params], opt


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
@pytest.mark.parametrize("foreach", [True, False])
def test_lion_matches_per_element_reference(weight_decay, foreach):
    lr, betas, steps = 0.01, (0.9, 0.99), grad_sequence(6)
    initial, final, _ = run_optimizer(
        lambda ps: Lion(ps, lr=lr, betas=betas, weight_decay=weight_decay, foreach=foreach), steps)
    expected = reference_lion(initial, steps, lr, *betas, weight_decay)
    for got, want in zip(final, expected):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)


def test_zero_gradient_from_start_moves_only_by_weight_decay():
    zeros = [[torch.zeros(s) for s in SHAPES]] * 3
    initial, final, _ = run_optimizer(lambda ps: Lion(ps, lr=0.1, weight_decay=0.5), zeros)
    for p0, p in zip(initial, final):
        torch.testing.assert_close(p, p0 * (1 - 0.1 * 0.5) ** 3)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_foreach_and_single_tensor_paths_agree_exactly(weight_decay):
    steps = grad_sequence(5, seed=3)
    _, a, opt_a = run_optimizer(lambda ps: Lion(ps, lr=1e-3, weight_decay=weight_decay, foreach=True), steps)
    _, b, opt_b = run_optimizer(lambda ps: Lion(ps, lr=1e-3, weight_decay=weight_decay, foreach=False), steps)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_fused_path_agrees_with_foreach():
    """The torch.compile'd kernel (compiles once, a few seconds with inductor's cache)."""
    steps = grad_sequence(4, seed=5)
    _, a, _ = run_optimizer(lambda ps: Lion(ps, lr=1e-3, weight_decay=0.1, fused=True), steps)
    _, b, _ = run_optimizer(lambda ps: Lion(ps, lr=1e-3, weight_decay=0.1), steps)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_parameters_without_gradient_are_untouched():
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = Lion([used, unused], lr=0.1, weight_decay=0.1)
    used.grad = torch.ones(3)
    opt.step()
    assert torch.equal(unused.detach(), torch.ones(3)) and unused not in opt.state
    assert torch.allclose(used.detach(), torch.full((3,), 0.99 - 0.1))


def test_article_variant_matches_its_formula_and_is_not_lion():
    lr, (b1, b2), eps = 1e-3, (0.9, 0.999), 1e-8
    steps = grad_sequence(3, seed=7)
    initial, final, _ = run_optimizer(lambda ps: ArticleSignAdam(ps, lr=lr, betas=(b1, b2), eps=eps), steps)
    p, m, s = initial[0].flatten().double().tolist(), [0.0] * 12, [0.0] * 12
    for grads in steps:
        g = grads[0].flatten().tolist()
        for i in range(12):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            s[i] = b2 * s[i] + (1 - b2) * g[i] ** 2
            p[i] -= lr * sign(m[i]) / (math.sqrt(s[i]) + eps)
    torch.testing.assert_close(final[0].double().flatten(), torch.tensor(p, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)
    _, lion_final, _ = run_optimizer(lambda ps: Lion(ps, lr=lr, betas=(b1, b2)), steps)
    assert not torch.allclose(final[0], lion_final[0])


def test_state_bytes_per_param_lion_one_moment_adamw_two():
    model = torch.nn.Linear(64, 32)
    results = {}
    for name, opt in {"lion": Lion(model.parameters()), "adamw": torch.optim.AdamW(model.parameters()),
                      "article": ArticleSignAdam(model.parameters())}.items():
        model(torch.randn(4, 64)).sum().backward()
        opt.step()
        results[name] = state_bytes_per_param(opt)
    assert results["lion"] == {"exp_avg": 4.0, "total": 4.0}
    assert results["article"]["total"] == 8.0
    # AdamW: exp_avg + exp_avg_sq, plus one 0-dim step counter per tensor
    assert 8.0 < results["adamw"]["total"] < 8.2


@pytest.mark.compiles_op
def test_deepspeed_cpu_lion_matches_dslib_lion():
    """COMPILES DeepSpeed's cpu_lion C++ op on first use (~90 s; cached in .cache/torch_extensions)."""
    lion_module = pytest.importorskip("deepspeed.ops.lion")
    steps = grad_sequence(5, seed=11)
    hyper = dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)  # explicit: DS defaults differ
    _, ds_final, ds_opt = run_optimizer(lambda ps: lion_module.DeepSpeedCPULion(ps, **hyper), steps)
    _, ours, _ = run_optimizer(lambda ps: Lion(ps, **hyper), steps)
    for x, y in zip(ds_final, ours):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    # DeepSpeed's CPU Lion allocates an Adam-style exp_avg_sq it never uses: 8 bytes/param
    assert state_bytes_per_param(ds_opt)["total"] == 8.0
    # where the interpolation is exactly 0 (zero gradient, zero momentum: e.g. the embedding
    # row of a token absent from the batch) the paper's sign(0) = 0 leaves p alone, while
    # DeepSpeed's -copysign(lr, +0.0) moves it by -lr
    p_ds, p_ours = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    ds_lion, ours_lion = lion_module.DeepSpeedCPULion([p_ds], **hyper), Lion([p_ours], **hyper)
    for p, opt in ((p_ds, ds_lion), (p_ours, ours_lion)):
        p.grad = torch.tensor([0.0, 1.0])
        opt.step()
    assert p_ours[0].item() == 0.0 and p_ds[0].item() == pytest.approx(-1e-3)
    assert p_ours[1].item() == p_ds[1].item() == pytest.approx(-1e-3)

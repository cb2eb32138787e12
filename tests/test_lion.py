"""Lion against a per-element reference; its four code paths; DeepSpeed's CPU Lion op."""
import copy
import math

import pytest
import torch

from dslib.optim import ArticleSignAdam, Lion, state_bytes_per_param
from dslib.optim.lion import IMPLEMENTATIONS

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
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_lion_matches_per_element_reference(weight_decay, implementation):
    lr, betas, steps = 0.01, (0.9, 0.99), grad_sequence(6)
    initial, final, _ = run_optimizer(
        lambda ps: Lion(ps, lr=lr, betas=betas, weight_decay=weight_decay, implementation=implementation), steps)
    expected = reference_lion(initial, steps, lr, *betas, weight_decay)
    for got, want in zip(final, expected):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)


def test_zero_gradient_from_start_moves_only_by_weight_decay():
    zeros = [[torch.zeros(s) for s in SHAPES]] * 3
    initial, final, _ = run_optimizer(lambda ps: Lion(ps, lr=0.1, weight_decay=0.5), zeros)
    for p0, p in zip(initial, final):
        torch.testing.assert_close(p, p0 * (1 - 0.1 * 0.5) ** 3)


def final_states(implementation, shapes, steps=6, betas=(0.9, 0.99), weight_decay=0.1, seed=3):
    """Parameters and moments after ``steps`` random-gradient steps (same draws for every path)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    opt = Lion(params, lr=1e-2, betas=betas, weight_decay=weight_decay, implementation=implementation)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach() for p in params], [opt.state[p]["exp_avg"] for p in params]


# lengths around the vector widths (8, 16) and a large tensor the threads split between them
KERNEL_SHAPES = [(37, 5), (1,), (15,), (16,), (17,), (33,), (129, 7), (4096, 65)]


@pytest.mark.parametrize("implementation", ["foreach", "cpu_kernel", "auto"])
@pytest.mark.parametrize("betas", [(0.9, 0.99), (0.3, 0.6)])  # lerp weight below and above 0.5
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_paths_are_bit_identical_to_single_tensor(implementation, betas, weight_decay):
    """foreach calls the same ATen kernels; the C++ kernel rounds as torch's vectorised lerp,
    mul and add do (one fma per lerp), so every parameter and moment is equal, bit for bit."""
    want = final_states("single_tensor", KERNEL_SHAPES, betas=betas, weight_decay=weight_decay)
    got = final_states(implementation, KERNEL_SHAPES, betas=betas, weight_decay=weight_decay)
    for w, g in zip(want[0] + want[1], got[0] + got[1]):
        assert torch.equal(w, g)


@pytest.mark.parametrize("threads", [1, 3])
def test_cpu_kernel_splits_work_between_any_number_of_threads(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = final_states("cpu_kernel", KERNEL_SHAPES)
    finally:
        torch.set_num_threads(before)
    want = final_states("single_tensor", KERNEL_SHAPES)
    for w, g in zip(want[0] + want[1], got[0] + got[1]):
        assert torch.equal(w, g)


def test_compiled_path_agrees_with_foreach():
    """The torch.compile'd kernel (compiles once, a few seconds with inductor's cache); inductor
    rounds lerp its own way, so moments differ in the last bits."""
    steps = grad_sequence(4, seed=5)
    _, a, _ = run_optimizer(lambda ps: Lion(ps, lr=1e-3, weight_decay=0.1, implementation="compiled"), steps)
    _, b, _ = run_optimizer(lambda ps: Lion(ps, lr=1e-3, weight_decay=0.1, implementation="foreach"), steps)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_cpu_kernel_hands_what_it_cannot_take_to_foreach():
    """bf16, float64 and non-contiguous parameters in a cpu_kernel group step like the reference."""
    def make():
        gen = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(40, generator=gen).to(torch.bfloat16)),
                torch.nn.Parameter(torch.randn(6, 8, generator=gen).t()),  # non-contiguous
                torch.nn.Parameter(torch.randn(9, generator=gen, dtype=torch.float64)),
                torch.nn.Parameter(torch.randn(50, generator=gen))]
    results = {}
    for implementation in ("single_tensor", "cpu_kernel"):
        params = make()
        opt = Lion(params, lr=1e-2, weight_decay=0.1, implementation=implementation)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            opt.step()
        results[implementation] = [p.detach() for p in params]
    for want, got in zip(results["single_tensor"], results["cpu_kernel"]):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_param_groups_keep_their_own_lr_and_weight_decay(implementation):
    steps = grad_sequence(4, seed=9)
    gen = torch.Generator().manual_seed(2)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    initial = [p.detach().clone() for p in params]
    opt = Lion([{"params": params[:2], "lr": 0.02, "weight_decay": 0.0},
                {"params": params[2:], "lr": 0.005, "weight_decay": 0.5}], implementation=implementation)
    for grads in steps:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    first = reference_lion(initial[:2], [g[:2] for g in steps], 0.02, 0.9, 0.99, 0.0)
    second = reference_lion(initial[2:], [g[2:] for g in steps], 0.005, 0.9, 0.99, 0.5)
    for got, want in zip(params, first + second):
        torch.testing.assert_close(got.detach().double(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("saved_by, loaded_by", [("cpu_kernel", "foreach"), ("foreach", "cpu_kernel"),
                                                 ("cpu_kernel", "cpu_kernel")])
def test_state_dict_resumes_exactly(saved_by, loaded_by):
    """3 steps, save, a new optimizer loads the state and takes 3 more: the same as 6 in one go."""
    steps = grad_sequence(6, seed=13)
    _, uninterrupted, _ = run_optimizer(lambda ps: Lion(ps, lr=1e-2, weight_decay=0.1), steps)
    gen = torch.Generator().manual_seed(1)  # run_optimizer's initial parameters
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    opt = Lion(params, lr=1e-2, weight_decay=0.1, implementation=saved_by)
    for i, grads in enumerate(steps):
        if i == 3:
            saved = copy.deepcopy(opt.state_dict())
            opt = Lion(params, lr=1e-2, weight_decay=0.1, implementation=loaded_by)
            opt.load_state_dict(saved)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    for got, want in zip(params, uninterrupted):
        assert torch.equal(got.detach(), want)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_parameters_without_gradient_are_untouched(implementation):
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = Lion([used, unused], lr=0.1, weight_decay=0.1, implementation=implementation)
    used.grad = torch.ones(3)
    opt.step()
    assert torch.equal(unused.detach(), torch.ones(3)) and unused not in opt.state
    assert torch.allclose(used.detach(), torch.full((3,), 0.99 - 0.1))


def test_cpu_kernel_step_invalidates_graphs_that_saved_the_parameter():
    """The kernel writes through raw pointers; it bumps version counters as torch's in-place ops
    do, so a backward through a graph that saved the old parameter fails instead of being wrong."""
    p = torch.nn.Parameter(torch.randn(64))
    opt = Lion([p], lr=1e-2, implementation="cpu_kernel")
    p.grad = torch.randn(64)
    loss = (p * p).sum()  # saves p for its backward
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_unknown_implementation_is_an_error_naming_it():
    with pytest.raises(ValueError, match="implementation.*'fast'"):
        Lion([torch.nn.Parameter(torch.ones(2))], implementation="fast")


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

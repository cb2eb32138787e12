"""Mixed precision: loss scaling skips overflowing steps, autocast keeps LayerNorm in FP32,
FP16 without scaling flushes small gradients to zero, the memory split adds up."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dslib.studies.mixed_precision import (gradient_underflow, hardware_note, memory_split, module_output_dtypes,
                                          train_run)
from dslib.train.precision import (INIT_SCALE, Precision, autocast, cpu_flags, cpu_precision_support,
                                   low_precision_slowdown, make_grad_scaler)
from dslib.train.step import OptimizerStepper, batch_loss, train_step

CPU = torch.device("cpu")


class Regression(nn.Module):
    """A small MLP with the book's model interface: ``model(x, targets=y).loss`` is an MSE
    (times ``loss_factor``: inf makes every gradient inf, 1e-9 makes them underflow fp16)."""

    def __init__(self, loss_factor: float = 1.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 4))
        self.loss_factor = loss_factor

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> SimpleNamespace:
        loss = nn.functional.mse_loss(self.net(x).float(), targets) * self.loss_factor
        return SimpleNamespace(loss=loss, aux_loss=loss.new_zeros(()), mems=[], stats={})


def small_model(loss_factor: float = 1.0) -> nn.Module:
    torch.manual_seed(0)
    return Regression(loss_factor)


BATCH = (torch.randn(8, 16, generator=torch.Generator().manual_seed(1)), torch.zeros(8, 4))


def test_grad_scaler_skips_step_with_inf_gradients_and_lowers_scale():
    model = small_model(loss_factor=float("inf"))  # every gradient becomes inf/nan
    stepper = OptimizerStepper(torch.optim.SGD(model.parameters(), lr=0.1), make_grad_scaler(CPU, "fp16"))
    assert stepper.scaler.get_scale() == INIT_SCALE
    before = [p.detach().clone() for p in model.parameters()]
    assert train_step(model, BATCH, stepper, precision="fp16").skipped is True
    assert stepper.scaler.get_scale() == INIT_SCALE * 0.5
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    model.loss_factor = 1.0
    assert train_step(model, BATCH, stepper, precision="fp16").skipped is False  # a clean step is taken
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert stepper.scaler.get_scale() == INIT_SCALE * 0.5


def test_scaler_disabled_for_bf16_and_fp32():
    assert not make_grad_scaler(CPU, "bf16").is_enabled()
    assert not make_grad_scaler(CPU, Precision.FP32).is_enabled()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_keeps_layernorm_and_loss_in_fp32(precision):
    dtypes = module_output_dtypes(small_model(), BATCH, CPU, precision)
    assert dtypes["Linear"] == precision.replace("bf16", "bfloat16").replace("fp16", "float16")
    assert dtypes["LayerNorm"] == "float32"
    assert dtypes["loss"] == "float32"
    with autocast(CPU, precision):  # softmax of a low-precision tensor comes out FP32
        assert torch.softmax(torch.randn(4, 8).to(Precision(precision).dtype), -1).dtype == torch.float32
    # master weights stay FP32 under autocast
    model = small_model()
    with autocast(CPU, precision):
        batch_loss(model, BATCH)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_fp16_without_scaling_flushes_small_gradients_to_zero():
    tiny = small_model(loss_factor=1e-9)  # gradients ~1e-9 < fp16's 6e-8
    rows = {r["parameter"]: r for r in gradient_underflow(tiny, BATCH, CPU, loss_scale=2.0**24)}
    first = rows["net.0.weight"]
    assert first["nonzero_fp32"] > 0
    assert first["zeroed_frac_unscaled"] > 0.9
    assert first["zeroed_frac_scaled"] < 0.05


def test_train_run_records_scale_and_skips():
    model = small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # 2**40 overflows FP16 activations' gradients at once: steps are skipped, the scale halves
    scaler = make_grad_scaler(CPU, "fp16", init_scale=2.0**40)
    run = train_run(model, [BATCH] * 6, CPU, "fp16", opt, scaler)
    assert run.skipped and run.skipped[0] == 1
    assert run.scale[0] == 2.0**40 and run.scale[-1] < 2.0**40
    assert len(run.loss) == 6 and all(t > 0 for t in run.step_s)


def test_memory_split_counts_model_states():
    model = small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    split = memory_split(model, (torch.randn(256, 16), torch.zeros(256, 4)), CPU, "fp32", opt)
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert split["by_category"]["PARAMETER"] == param_bytes
    assert split["by_category"]["OPTIMIZER_STATE"] >= 2 * param_bytes
    assert split["activation_bytes"] > 0
    assert split["peak_bytes"] == split["model_state_bytes"] + split["activation_bytes"]


def test_low_precision_slowdown_is_measured_once_and_leaves_the_callers_rng_alone():
    rng_before = torch.get_rng_state()
    measured = low_precision_slowdown(CPU)
    assert torch.equal(torch.get_rng_state(), rng_before)  # it seeds its own model and tokens
    assert low_precision_slowdown("cpu") is measured  # cached per process and device
    assert measured["fp32_step_ms"] > 0 and measured["bf16_vs_fp32"] > 0 and measured["fp16_vs_fp32"] > 0
    assert measured["avoid_for_long_runs"] == [p for p in ("bf16", "fp16") if measured[f"{p}_vs_fp32"] > 2.0]
    assert set(measured["cpu_flags"]) <= cpu_flags()
    assert measured["native_bf16"] == cpu_precision_support()["native_bf16"]


def test_hardware_note_quotes_the_measured_slowdown():
    measured = low_precision_slowdown(CPU)
    note = hardware_note(CPU)
    assert f"{measured['bf16_vs_fp32']:.1f}x" in note and f"{measured['fp16_vs_fp32']:.1f}x" in note
    assert "about 30x" not in note


def test_cpu_flags_read_from_a_cpuinfo_file(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "fma", "avx512f", "avx512_bf16"}
    support = cpu_precision_support(cpuinfo)
    assert support["cpu"] == "Test CPU" and support["native_bf16"] and not support["native_fp16"]
    assert cpu_flags(tmp_path / "missing") == set()



def test_format_bits_are_the_ieee_layouts_and_fp16_limits_classify_gradients():
    from dslib.studies.precision_plots import below_fp16, format_bits

    layouts = {name: (f["sign"], f["exponent"], f["mantissa"]) for name, f in
               (("fp32", format_bits(torch.float32)), ("bf16", format_bits(torch.bfloat16)),
                ("fp16", format_bits(torch.float16)))}
    assert layouts == {"fp32": (1, 8, 23), "bf16": (1, 8, 7), "fp16": (1, 5, 10)}
    assert format_bits(torch.float16)["smallest_subnormal"] == 2.0 ** -24
    magnitudes = torch.tensor([1e-9, 1e-6, 1e-3, 1e5])  # flushed, subnormal, normal, overflow
    assert below_fp16(magnitudes) == {"below_subnormal_min": 0.25, "subnormal": 0.25, "above_max": 0.25}
    # the article's scale lifts 1e-6 and 1e-3 into normals, and 1e-9 only into the subnormals (3.3e-5)
    scaled = below_fp16(magnitudes[:3], 2.0 ** 15)
    assert scaled == {"below_subnormal_min": 0.0, "subnormal": 1 / 3, "above_max": 0.0}
    # what fp16 itself does with them
    assert torch.tensor(1e-9).half() == 0 and torch.tensor(1e-6).half() != 0

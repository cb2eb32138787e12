"""Chapters 06, 07 and 09's diagrams draw what they are given: the measured instructions, the
model's shapes, the measured rows."""
import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from dslib.parallel.pipeline import PipeRun  # noqa: E402
from dslib.studies import pipeline_report, precision_plots, tp_report, tuning_plots  # noqa: E402


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_pipeline_timeline_draws_every_measured_instruction_at_its_time():
    # stage 0 of a 1F1B step: F0 F1 B0 F2 B1 B2 with a send between; stage 1 starts one forward later
    stage0 = [("ForwardPass", 0.0, 1.0), ("SendActivation", 1.0, 1.1), ("ForwardPass", 1.1, 2.0),
              ("BackwardPass", 3.0, 5.0), ("ForwardPass", 5.0, 6.0), ("BackwardPass", 6.5, 8.0),
              ("BackwardPass", 8.5, 10.0)]
    stage1 = [("ForwardPass", 1.2, 2.2), ("BackwardPass", 2.2, 4.0), ("ForwardPass", 4.0, 5.0),
              ("BackwardPass", 5.0, 7.0), ("ForwardPass", 7.0, 8.0), ("BackwardPass", 8.0, 9.0)]
    warmup = [("ForwardPass", -50.0, -49.0)]
    run = PipeRun("toy", {}, "uniform", 3, [0, 1, 2], [1, 1], [1.0], [[warmup, stage0], [warmup, stage1]], 0.0)
    fig = pipeline_report.plot_pipeline_timeline([run])
    ax = fig.axes[0]
    bars = [(round(p.get_x(), 6), round(p.get_width(), 6)) for p in ax.patches]
    assert len(bars) == len(stage0) + len(stage1)  # the last step only, every instruction
    assert (1100.0, 900.0) in bars and (8500.0, 1500.0) in bars  # ms from the step's first instruction
    assert _texts(fig) == ["F0", "F1", "B0", "F2", "B1", "B2", "F0", "B0", "F1", "B1", "F2", "B2"]


def test_megatron_split_shows_the_shards_of_the_given_shapes():
    texts = " ".join(_texts(tp_report.plot_megatron_split(hidden=128, intermediate=512, tp=4, tokens=64)))
    assert "A3 (column)\n[128, 128]" in texts and "B0 (row)\n[128, 128]" in texts
    assert "[64, 128]" in texts and "fwd: identity\nbwd: all-reduce" in texts
    texts = " ".join(_texts(tp_report.plot_megatron_split(hidden=96, intermediate=384, tp=2, tokens=10)))
    assert "A1 (column)\n[96, 192]" in texts and "A2" not in texts


def test_bit_layout_and_gradient_figures_use_the_measured_values():
    fig = precision_plots.bit_layouts()
    assert [t for t in _texts(fig) if t.isdigit()] == ["1", "8", "23", "1", "8", "7", "1", "5", "10"]
    magnitudes = torch.tensor([1e-9, 1e-6, 1e-3, 1e-2])
    ax = precision_plots.gradient_range(magnitudes, 2.0 ** 15).axes[0]
    assert sorted(round(line.get_xdata()[0], 2) for line in ax.lines) == [-7.22, -4.21, 4.82]  # fp16 limits
    assert sum(p.get_height() for p in ax.patches) == 2 * len(magnitudes)  # unscaled + scaled histograms


def test_checkpoint_readings_figure_has_one_bar_per_scheme():
    rows = [{"scheme": s, "checkpoint_every": k, "peak_MB": mb, "step_s": t, "time_overhead": t / 0.1 - 1,
             "modelled_activations_MB": a, "modelled_recompute": r}
            for s, k, mb, t, a, r in (("none", None, 10.0, 0.1, 4.0, 0.0), ("chunks", 4, 7.0, 0.13, 1.5, 0.3),
                                      ("selective", None, 9.0, 0.11, 3.2, 0.05))]
    fig = tuning_plots.checkpoint_readings(rows)
    ax_mem, ax_time = fig.axes
    assert [p.get_height() for p in ax_mem.patches] == [10.0, 7.0, 9.0]
    assert [round(y, 6) for _, y in ax_mem.collections[0].get_offsets()] == [10.0, 7.5, 9.2]  # plain moved by model
    assert [t.get_text() for t in ax_time.texts][1] == "+30%\n(model +30%)"

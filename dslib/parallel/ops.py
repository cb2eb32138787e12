"""DeepSpeed's C++ ops: build them once per checkout, and say which are already built.

DeepSpeed JIT-compiles an op the first time a run needs it (measured on a 2-core CPU:
cpu_adam ~70 s, cpu_lion ~90 s, async_io ~210 s). dslib.env points TORCH_EXTENSIONS_DIR at
<repo>/.cache/torch_extensions, so after ``python -m dslib.parallel.ops build`` no notebook or
test compiles again. Which op a run needs:
  cpu_adam  ZeRO ``offload_optimizer`` (DeepSpeedCPUAdam)
  cpu_lion  Lion with ``offload_optimizer`` (chapter 08)
  async_io  ZeRO-Infinity NVMe offload (needs the ``libaio-dev`` system package)
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import dslib  # noqa: F401  (sets TORCH_EXTENSIONS_DIR before DeepSpeed reads it)

BOOK_OPS: dict[str, str] = {"cpu_adam": "CPUAdamBuilder", "cpu_lion": "CPULionBuilder",
                            "async_io": "AsyncIOBuilder"}


def _builder(op: str):
    from deepspeed.accelerator import get_accelerator

    if op not in BOOK_OPS:
        raise ValueError(f"unknown op {op!r}; the book uses: {', '.join(BOOK_OPS)}")
    return get_accelerator().create_op_builder(BOOK_OPS[op])


def is_built(op: str) -> bool:
    """True when the op's shared library is already in the extensions cache (no compile on use)."""
    if op not in BOOK_OPS:
        raise ValueError(f"unknown op {op!r}; the book uses: {', '.join(BOOK_OPS)}")
    root = Path(os.environ["TORCH_EXTENSIONS_DIR"])  # the op's name is its folder's name
    return any(root.glob(f"**/{op}/{op}*.so"))


def build(op: str) -> float:
    """Compile (or load, when cached) one op; returns the seconds it took."""
    start = time.perf_counter()
    _builder(op).load(verbose=False)
    return time.perf_counter() - start


def skip_shm_comm() -> None:
    """Tell DeepSpeed not to build its CPU shared-memory all-reduce (40-75 s of compile).

    That kernel serves only ``inference_all_reduce``; ZeRO training calls torch.distributed
    (gloo) directly, so the op would be compiled and never used. Call before deepspeed.initialize.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def initialize_engine(model, config: dict, model_parameters=None, **kwargs):
    """``deepspeed.initialize`` on the process group the launcher already set up, without
    compiling the unused shared-memory op; returns the engine. ``model_parameters`` defaults to
    ``model.parameters()``; other keywords (e.g. ``lr_scheduler``) go to deepspeed.initialize."""
    import deepspeed

    skip_shm_comm()
    engine, *_ = deepspeed.initialize(model=model, config=config, dist_init_required=False,
                                      model_parameters=model.parameters() if model_parameters is None
                                      else model_parameters, **kwargs)
    return engine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dslib.parallel.ops",
                                     description="Pre-build DeepSpeed's C++ ops into the op cache.")
    parser.add_argument("command", choices=["build", "status"])
    parser.add_argument("ops", nargs="*", default=list(BOOK_OPS), help=f"default: {' '.join(BOOK_OPS)}")
    args = parser.parse_args(argv)
    failed = []
    for op in args.ops:
        if args.command == "status":
            print(f"{op:10s} {'built' if is_built(op) else 'not built'}")
            continue
        try:  # one op that cannot build (e.g. async_io without libaio-dev) must not stop the others
            print(f"{op:10s} ready in {build(op):.1f} s", flush=True)
        except Exception as err:
            failed.append(op)
            print(f"{op:10s} FAILED: {type(err).__name__}: {str(err).splitlines()[-1] if str(err) else ''}",
                  flush=True)
    if failed:
        raise SystemExit(f"ops not built: {', '.join(failed)}")


if __name__ == "__main__":
    main()

"""Loop DeepSpeed runs of chapters 05 and 06 while other processes keep every core busy, and
count the runs whose ranks die at exit ("terminate called without an active exception").

    python scripts/stress_teardown.py --rounds 10 --burners 2

Each round runs ZeRO-3 with optimizer offload and NVMe parameter offload (the configuration
with async-I/O threads) and a 2-stage DeepSpeed pipeline; a failing run is reported with the
tail of the failing rank's stderr. This is a diagnostic, not a test: it needs minutes.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

from dslib.dist.launch import LaunchError


def burn(stop: float) -> None:
    while time.monotonic() < stop:
        pass


def one_round(folder: Path) -> list[tuple[str, str]]:
    from dslib.parallel.pipeline import pipe_config, run_pipeline_engines
    from dslib.studies.zero3 import run_zero

    failures = []
    runs = {
        "zero3_nvme": lambda: run_zero("zero3_nvme", nprocs=2, model="tiny", steps=3, nvme_dir=folder,
                                       model_overrides={"hidden_size": 256, "intermediate_size": 2048}),
        "zero3_offload_cpu": lambda: run_zero("zero3_offload_cpu", nprocs=2, model="tiny", steps=3),
        "pipeline": lambda: run_pipeline_engines([{"config": pipe_config("tiny", num_layers=4), "label": "stress",
                                           "partition_method": "uniform", "micro_batches": 2}], steps=2),
    }
    for name, run in runs.items():
        try:
            run()
        except LaunchError as error:
            failures.append((name, str(error)))
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--burners", type=int, default=2, help="busy processes competing for the cores")
    args = parser.parse_args()
    burners = [mp.Process(target=burn, args=(time.monotonic() + 24 * 3600,), daemon=True)
               for _ in range(args.burners)]
    for p in burners:
        p.start()
    failures, started = [], time.monotonic()
    try:
        for i in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="dslib-stress-") as tmp:
                found = one_round(Path(tmp))
            failures += [(i, name, message) for name, message in found]
            print(f"round {i + 1}/{args.rounds}: {len(found)} failed runs "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        for p in burners:
            p.terminate()
    for i, name, message in failures:
        print(f"--- round {i + 1}, {name}\n{message}")
    print(f"{len(failures)} of {3 * args.rounds} runs failed under {args.burners} busy processes")


if __name__ == "__main__":
    main()

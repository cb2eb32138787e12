"""One rank of a ``dslib.dist.launch`` run: set up the process group, call the entry.

Started by torchrun (RANK/WORLD_SIZE/LOCAL_RANK set) or by srun under Slurm (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID mapped to the same variables). Rank 0 pickles the entry's
return value to the result file; any exception exits non-zero with its traceback on stderr.
"""
from __future__ import annotations

import argparse
import faulthandler
import importlib
import os
import pickle
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

SLURM_TO_TORCH = {"SLURM_PROCID": "RANK", "SLURM_NTASKS": "WORLD_SIZE", "SLURM_LOCALID": "LOCAL_RANK"}


def resolve_entry(entry: str) -> Callable[..., Any]:
    """'package.module:function' -> the function."""
    module_name, sep, func_name = entry.partition(":")
    if not sep:
        raise ValueError(f"entry must look like 'package.module:function', got {entry!r}")
    return getattr(importlib.import_module(module_name), func_name)


def error_file(folder: Path, rank: int) -> Path:
    return folder / f"rank{rank}.error"


def _map_slurm_env() -> None:
    for slurm, torch_name in SLURM_TO_TORCH.items():
        if slurm in os.environ and torch_name not in os.environ:
            os.environ[torch_name] = os.environ[slurm]
    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", os.environ["WORLD_SIZE"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entry", required=True)
    parser.add_argument("--args-file", type=Path, required=True)
    parser.add_argument("--result-file", type=Path, required=True)
    args = parser.parse_args(argv)
    _map_slurm_env()
    # a rank killed by a signal (abort, segfault) still prints every thread's Python stack
    faulthandler.enable()

    import torch
    import torch.distributed as dist

    import dslib  # noqa: F401  (offline env and op cache)
    from dslib.env import dist_backend
    from dslib.io import write_bytes_atomic

    try:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend=dist_backend())
        kwargs = pickle.loads(args.args_file.read_bytes())
        result = resolve_entry(args.entry)(**kwargs)
    except BaseException:
        # every launcher mixes or hides rank output differently: this file is how the
        # launching side learns, whatever the launcher, which rank failed and why
        error_file(args.result_file.parent, int(os.environ["RANK"])).write_text(traceback.format_exc())
        raise
    if dist.get_rank() == 0:
        write_bytes_atomic(args.result_file, pickle.dumps(result))
    # Orderly end: the entry has released what it held (e.g. zero.release_engine), rank 0's
    # result is on disk; the barrier keeps every rank's process group up until all got here,
    # so none exits while a peer still talks to it; then the group goes, then the process.
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    # Nothing is owed any more: leave without interpreter finalization, where C++ objects an
    # entry left alive (I/O or communication threads of torch/DeepSpeed extensions) would be
    # destroyed in no set order; a joinable std::thread destroyed there aborts the process
    # ("terminate called without an active exception") after its work succeeded.
    os._exit(0)


if __name__ == "__main__":
    main()

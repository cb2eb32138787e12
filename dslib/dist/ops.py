"""DeepSpeed's C++ ops: built once per user and machine, reused by every checkout.

DeepSpeed JIT-compiles an op the first time a run needs it (measured on a 2-core CPU:
cpu_adam 37-97 s, cpu_lion 36-90 s, async_io 197-370 s). torch's JIT cache cannot be shared
between checkouts: ninja keys every object on its command line, which holds the absolute
source paths of each checkout's own venv. So ``python -m dslib.dist.ops build`` keeps
each op's shared library in a per-user cache (``$DSLIB_OPS_CACHE``, default
``~/.cache/dslib/deepspeed-ops``) under a key of everything the binary depends on: the op's
sources and headers, its compiler flags (``-march=native``: the CPU's flags too), the
compiler, torch, DeepSpeed and Python versions. A missing or stale key builds again (into
the checkout's TORCH_EXTENSIONS_DIR) and stores the result; ``preload()`` hands the cached
libraries to DeepSpeed before an engine starts, so no rank compiles. Which op a run needs:
  cpu_adam  ZeRO ``offload_optimizer`` (DeepSpeedCPUAdam)
  cpu_lion  Lion with ``offload_optimizer`` (chapter 08)
  async_io  ZeRO-Infinity NVMe offload (needs the ``libaio-dev`` system package), with the
            ``pin_memory`` op whose symbols it links against
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import inspect
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dslib  # noqa: F401  (sets TORCH_EXTENSIONS_DIR before DeepSpeed reads it)
from dslib.dist.ports import free_port
from dslib.env import dist_backend
from dslib.io import atomic_path

# op -> DeepSpeed builder, in dependency order (async_io links against pin_memory's symbols)
BOOK_OPS: dict[str, str] = {"cpu_adam": "CPUAdamBuilder", "cpu_lion": "CPULionBuilder",
                            "pin_memory": "PinMemoryBuilder", "async_io": "AsyncIOBuilder"}
EXPORTS_SYMBOLS = {"pin_memory"}
OPS_CACHE_VAR = "DSLIB_OPS_CACHE"


def _builder(op: str):
    from deepspeed.accelerator import get_accelerator

    if op not in BOOK_OPS:
        raise ValueError(f"unknown op {op!r}; the book uses: {', '.join(BOOK_OPS)}")
    return get_accelerator().create_op_builder(BOOK_OPS[op])


def ops_cache_root() -> Path:
    """The per-user cache of built ops: $DSLIB_OPS_CACHE, else $XDG_CACHE_HOME or ~/.cache."""
    if os.environ.get(OPS_CACHE_VAR):
        return Path(os.environ[OPS_CACHE_VAR])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dslib" / "deepspeed-ops"


def _cpu_flags() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    return next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), platform.processor())


def _compiler_version() -> str:
    compiler = os.environ.get("CXX", "c++")
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return f"{compiler}: not found"


@functools.lru_cache(maxsize=None)
def op_key(op: str) -> str:
    """A digest of everything the op's binary depends on: its sources and headers, the builder
    code that chooses its flags, the CPU's flags (``-march=native``), the compiler, versions.
    (Not ``builder.cxx_args()`` itself: it queries py-cpuinfo in subprocesses, seconds per call.)"""
    import deepspeed
    import torch

    builder = _builder(op)
    digest = hashlib.sha256()
    for part in (op, deepspeed.__version__, torch.__version__, str(torch.version.git_version),
                 sys.implementation.cache_tag, platform.machine(), _compiler_version(), _cpu_flags()):
        digest.update(str(part).encode() + b"\0")
    includes = [Path(builder.deepspeed_src_path(p)) for p in builder.include_paths()]
    files = [Path(inspect.getfile(cls)) for cls in type(builder).__mro__[:-1]]  # the flag-choosing code
    files += [Path(builder.deepspeed_src_path(p)) for p in builder.sources()]
    files += sorted(f for folder in includes if folder.is_dir() for f in folder.rglob("*") if f.is_file())
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def cached_library(op: str) -> Path:
    """Where the op's shared library for this machine and these versions lives (may not exist yet)."""
    return ops_cache_root() / f"{op}-{op_key(op)}" / f"{op}.so"


def is_built(op: str) -> bool:
    """True when the op is in the per-user cache for this machine and these versions."""
    return cached_library(op).exists()


def use_interpreter_tools() -> None:
    """Put this interpreter's bin folder first on PATH before a build: ninja rebuilds every op
    whose command line changed, which a different ninja (system versus venv) changes."""
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join(filter(None, [bin_dir, os.environ.get("PATH")]))


def build_op(op: str) -> tuple[float, bool]:
    """Make the op available: (seconds it took, whether it came from the cache). A cache miss
    compiles it with DeepSpeed's own builder and stores the library under its key."""
    start = time.perf_counter()
    target = cached_library(op)
    if target.exists():
        return time.perf_counter() - start, True
    from torch.utils.cpp_extension import _get_build_directory

    use_interpreter_tools()
    _builder(op).load(verbose=False)
    built = Path(_get_build_directory(op, verbose=False)) / f"{op}.so"
    with atomic_path(target) as tmp:  # another checkout building the same op at once finds a whole file
        shutil.copyfile(built, tmp)
        os.chmod(tmp, 0o644)
    return time.perf_counter() - start, False


def _load_library(op: str, library: Path):
    """Import a built op from its shared library, as torch's extension loader does."""
    import ctypes

    if op in EXPORTS_SYMBOLS:  # other ops link against its symbols: load them process-wide first
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    spec = importlib.util.spec_from_file_location(op, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def preload() -> list[str]:
    """Give DeepSpeed the cached op libraries, so that no rank compiles one; returns their names.
    An op not in the cache is left to DeepSpeed, which builds it on first use as it always does."""
    from deepspeed.ops.op_builder.builder import OpBuilder

    loaded = []
    for op in BOOK_OPS:  # in dependency order
        if op not in OpBuilder._loaded_ops:
            library = cached_library(op)
            if not library.exists():
                continue
            try:
                OpBuilder._loaded_ops[op] = _load_library(op, library)  # DeepSpeed's per-process registry
            except (ImportError, OSError):  # e.g. libaio removed since the build: DeepSpeed will say why
                continue
        loaded.append(op)
    return loaded


def skip_shm_comm() -> None:
    """Tell DeepSpeed not to build its CPU shared-memory all-reduce (40-75 s of compile).

    That kernel serves only ``inference_all_reduce``; ZeRO training calls torch.distributed
    (gloo) directly, so the op would be compiled and never used. Call before deepspeed.initialize.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def start_single_rank() -> None:
    """A one-rank process group in this process (gloo on CPU, nccl on CUDA), so that a DeepSpeed
    engine can run in a notebook's own process; a no-op when a group is already up."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                       "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend=dist_backend(), verbose=False)


def offloads_params_to_nvme(config: dict) -> bool:
    zero = config.get("zero_optimization", {})
    return zero.get("stage") == 3 and zero.get("offload_param", {}).get("device") == "nvme"


def partition_for_nvme(model, config: dict) -> None:
    """Turn the model's parameters into ZeRO-3 partitions with the swapper sized by the config.

    DeepSpeed 0.19.8 picks the NVMe swapper's element type in ``zero.Init._set_dtype`` with an
    expression that drops a given dtype (operator precedence, and ``is_bf16_supported`` not
    called; upstream PR deepspeedai/DeepSpeed#8428). The engine converts a model by passing its
    dtype, so on every CPU without fp16 support (AMD EPYC, AVX2) an fp32 model gets a bf16
    swapper: it sizes partitions at 2 bytes per element, none reaches the 1 MiB swap minimum,
    and nothing goes to NVMe, silently; a partition large enough would be swapped through a
    bf16 buffer. Converting here with the config alone (no dtype) takes the branch that reads
    the dtype from the config's fp16/bf16 sections; the engine then finds the partitions made.
    """
    import deepspeed

    deepspeed.zero.Init(module=model, config_dict_or_path=config)


def check_nvme_offload(engine) -> None:
    """Raise when a config asks for NVMe parameter offload and DeepSpeed does not do it."""
    params = list(engine.module.parameters())
    swappers = {id(s): s for p in params if (s := getattr(p, "nvme_swapper", None)) is not None}
    if not swappers:
        raise RuntimeError("the config offloads parameters to NVMe, but DeepSpeed attached no NVMe swapper")
    for swapper in swappers.values():
        if swapper.dtype != params[0].dtype:
            raise RuntimeError(f"DeepSpeed's NVMe swapper stores {swapper.dtype} while the parameters are "
                               f"{params[0].dtype}: partitions would be sized and swapped wrongly")
    swappable = [p for p in params if p.nvme_swapper.swappable_tensor(numel=p.partition_numel())]
    if not swappable:
        raise RuntimeError(f"NVMe parameter offload would move nothing: no parameter partition reaches "
                           f"DeepSpeed's swap minimum of {next(iter(swappers.values())).min_aio_bytes} bytes")


def initialize_engine(model, config: dict, model_parameters=None, **kwargs):
    """``deepspeed.initialize`` on the process group the launcher already set up, with the cached
    ops preloaded and without compiling the unused shared-memory op; returns the engine.
    ``model_parameters`` defaults to ``model.parameters()``; other keywords (e.g.
    ``lr_scheduler``) go to deepspeed.initialize. NVMe parameter offload is checked to happen."""
    import deepspeed

    skip_shm_comm()
    use_interpreter_tools()  # a cache miss makes DeepSpeed build the op here, with these tools
    preload()
    nvme = offloads_params_to_nvme(config)
    if nvme:
        partition_for_nvme(model, config)
    engine, *_ = deepspeed.initialize(model=model, config=config, dist_init_required=False,
                                      model_parameters=model.parameters() if model_parameters is None
                                      else model_parameters, **kwargs)
    if nvme:
        check_nvme_offload(engine)
    return engine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dslib.dist.ops",
                                     description="Build DeepSpeed's C++ ops once into the per-user op cache.")
    parser.add_argument("command", choices=["build", "status"])
    parser.add_argument("ops", nargs="*", default=list(BOOK_OPS), help=f"default: {' '.join(BOOK_OPS)}")
    args = parser.parse_args(argv)
    print(f"op cache: {ops_cache_root()}", flush=True)
    failed = []
    for op in args.ops:
        if args.command == "status":
            print(f"{op:10s} {'built' if is_built(op) else 'not built'} ({cached_library(op)})")
            continue
        try:  # one op that cannot build (e.g. async_io without libaio-dev) must not stop the others
            seconds, cached = build_op(op)
            print(f"{op:10s} {'cached' if cached else 'built'} in {seconds:.1f} s", flush=True)
        except Exception as err:
            failed.append(op)
            print(f"{op:10s} FAILED: {type(err).__name__}: {str(err).splitlines()[-1] if str(err) else ''}",
                  flush=True)
    if failed:
        raise SystemExit(f"ops not built: {', '.join(failed)}")


if __name__ == "__main__":
    main()

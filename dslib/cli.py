"""The ``dslib`` command: run one notebook, run the whole book, build its site, rebuild a report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dslib.jobs.params import DEFAULT_PROFILE, ParameterError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dslib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute one notebook with papermill into a run directory")
    run.add_argument("notebook", type=Path)
    run.add_argument("--profile", default=DEFAULT_PROFILE, help="configs/profiles/<NAME>.yaml (default: cpu)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override one parameter (checked against the notebook's parameters cell)")
    run.add_argument("-f", "--parameters-file", type=Path, help="YAML file of parameter overrides")
    run.add_argument("--out", type=Path, help="run directory (default: outputs/run-<profile>-<time>/<stem>)")

    book = sub.add_parser("cookbook", help="run every notebook in order and write the report")
    book.add_argument("--profile", default=DEFAULT_PROFILE)
    book.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,03")
    book.add_argument("--out", type=Path, help="book directory (default: outputs/cookbook)")

    submit = sub.add_parser("submit", help="submit a notebook as a Slurm job (dslib run on the allocation)")
    submit.add_argument("notebook", type=Path)
    submit.add_argument("--nodes", type=int, default=1)
    submit.add_argument("--gpus-per-node", type=int, default=0)
    submit.add_argument("--ntasks-per-node", type=int, help="default: one per GPU, else 1")
    submit.add_argument("--cpus-per-task", type=int, default=1)
    submit.add_argument("--partition")
    submit.add_argument("--account")
    submit.add_argument("--time", default="01:00:00")
    submit.add_argument("--profile", default="cluster")
    submit.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    submit.add_argument("--sweep", help="NAME=V1,V2,...: one job per value")
    submit.add_argument("--out", type=Path, help="folder for the run directories (default: outputs/<jobs|sweep>-<time>)")
    submit.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")

    jobs_cmd = sub.add_parser("jobs", help="follow a submitted job")
    jobs_cmd.add_argument("action", choices=["status", "wait"])
    jobs_cmd.add_argument("job_id")
    jobs_cmd.add_argument("--timeout", type=float, default=3600)

    site = sub.add_parser("book", help="build the static site of a cookbook run (every chapter, the claims "
                                       "ledger, the errata) from its run records")
    site.add_argument("book_dir", nargs="?", type=Path, help="a `dslib cookbook` folder (default: outputs/cookbook)")
    site.add_argument("--out", type=Path, help="site folder (default: BOOK_DIR/site)")
    site.add_argument("--errata", type=Path, help="errata markdown page (default: docs/errata.md, when present)")

    lab = sub.add_parser("lab", help="JupyterLab on 127.0.0.1 with a token, the project's settings and kernel")
    lab.add_argument("--port", type=int)
    lab.add_argument("--notebook-dir", type=Path, default=Path("notebooks"))

    ui = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 over the tracking store (MLFLOW_TRACKING_URI "
                                   "or outputs/mlflow.db)")
    ui.add_argument("--port", type=int, default=5000)

    rep = sub.add_parser("report", help="rebuild a report from run directories (a comparison if they "
                                        "are runs of one notebook)")
    rep.add_argument("run_dirs", nargs="+", type=Path)
    rep.add_argument("--out", type=Path, required=True, help="folder for index.md and index.html")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from dslib.jobs.runner import run_notebook

            result = run_notebook(args.notebook, args.profile, [tuple(p) for p in args.parameter],
                                  args.parameters_file, args.out, echo=print)
            print(f"{'ok' if result.ok else 'FAILED: ' + result.error} in {result.wall_s:.1f} s")
            print(f"executed notebook: {result.notebook}\nrun directory: {result.run_dir}")
            return 0 if result.ok else 1
        if args.command == "cookbook":
            from dslib.jobs.cookbook import run_book

            only = [n.strip() for n in args.only.split(",")] if args.only else None
            results, _ = run_book(args.profile, only, args.out)
            failed = [r.run_dir.name for r in results if not r.ok]
            if failed:
                print(f"failed: {', '.join(failed)}", file=sys.stderr)
            return 1 if failed else 0
        if args.command == "submit":
            return _submit(args)
        if args.command == "jobs":
            from dslib.jobs import slurm

            state = slurm.status(args.job_id) if args.action == "status" else slurm.wait(args.job_id, args.timeout)
            for key, value in state.items():
                print(f"{key}: {value}" if key != "log_tail" else f"log tail:\n{value}")
            return 0 if state["state"] not in slurm.FINISHED - {"COMPLETED"} else 1
        if args.command == "book":
            from dslib.jobs import book

            index = book.build_site(args.book_dir, args.out, **({"errata": args.errata} if args.errata else {}))
            print(f"book: {index} ({len(list(index.parent.glob('*.html')))} pages)")
            return 0
        if args.command in ("lab", "ui"):
            import os

            from dslib.jobs import lab, tracking

            if args.command == "lab":
                cmd, env = lab.lab_command(args.notebook_dir.resolve(), args.port), lab.lab_env()
            else:
                cmd, env = tracking.ui_command(args.port), dict(os.environ)
                print(f"MLflow UI: http://127.0.0.1:{args.port} (store {tracking.tracking_uri()})", flush=True)
            os.execve(cmd[0], cmd, env)
        if args.command == "report":
            from dslib.jobs import report
            from dslib.jobs.record import read_record

            stems = {read_record(d).get("stem", d.name) for d in args.run_dirs}
            build = report.compare if len(args.run_dirs) > 1 and len(stems) == 1 else report.build_report
            md, html = build(args.run_dirs, args.out)
            print(f"report: {md} and {html}")
            return 0
    except (ParameterError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"dslib: error: {err}", file=sys.stderr)
        return 2
    return 2


def _submit(args: argparse.Namespace) -> int:
    from dslib.jobs import slurm

    root = args.out or slurm.default_run_root("sweep" if args.sweep else "jobs")
    name, values = slurm.parse_sweep(args.sweep) if args.sweep else (None, [None])
    for value in values:
        params = [tuple(p) for p in args.parameter] + ([(name, value)] if name else [])
        stem = args.notebook.stem + (f"-{name}={value}" if name else "")
        spec = slurm.JobSpec(args.notebook, root / stem, args.profile, params, args.nodes, args.gpus_per_node,
                             args.ntasks_per_node, args.cpus_per_task, args.partition, args.account, args.time)
        job_id, script = slurm.submit(spec, dry_run=args.dry_run)
        if args.dry_run:
            print(script)
        else:
            print(f"submitted job {job_id}: run directory {spec.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

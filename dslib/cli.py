"""The ``dslib`` command: run one notebook, run the whole book, rebuild a report."""
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

    rep = sub.add_parser("report", help="rebuild index.md/index.html from run directories")
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
        if args.command == "report":
            from dslib.jobs.report import build

            md, html = build(args.run_dirs, args.out)
            print(f"report: {md} and {html}")
            return 0
    except (ParameterError, FileNotFoundError, ValueError) as err:
        print(f"dslib: error: {err}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())

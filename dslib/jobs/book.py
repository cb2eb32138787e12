"""The rendered book: a static site built from the run records of a cookbook run.

Each chapter page is its executed notebook (``<book>/<stem>/<stem>.ipynb``) rendered by
nbconvert's lab template, the renderers JupyterLab itself uses, so prose, code, tables and
figures look as they did in the lab. The stock template loads require.js, MathJax, mermaid
and the widget manager from CDNs; here those blocks are empty, math is converted to MathML at
build time (latex2mathml; browsers draw MathML natively), figures are written as PNG files
beside the page and one stylesheet serves every page. Nothing is fetched at build or view
time. The index, the claims ledger (from the records, by ``report.claims_ledger``) and the
errata (``docs/errata.md``, when the checkout has it) are pages too; every page says what
produced it: commit, profile, machine and date, from the record.
"""
from __future__ import annotations

import html
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dslib.env import REPO_ROOT, outputs_dir
from dslib.jobs import report
from dslib.jobs.record import METRICS_FILE, read_record, write_json_atomic

ERRATA = REPO_ROOT / "docs" / "errata.md"
REFERENCE_DIR = REPO_ROOT / "docs" / "book"
STAMP_FILE = "book.json"
TITLE = "The dslib cookbook"
TEMPLATE = "book_page.html.j2"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
BOOK_CSS = """
body { margin: 0; }
.book-bar { font: 14px/1.5 system-ui, sans-serif; background: #f3f4f6; border-bottom: 1px solid #d1d5db;
            padding: 6px 16px; display: flex; flex-wrap: wrap; gap: 4px 18px; }
.book-bar.bottom { border-top: 1px solid #d1d5db; border-bottom: none; margin-top: 24px; }
.book-bar a { color: #1d4ed8; text-decoration: none; }
.book-provenance { font: 13px/1.5 system-ui, sans-serif; color: #374151; padding: 4px 16px 8px;
                   border-bottom: 1px solid #e5e7eb; }
.book-failed { background: #fee2e2; color: #7f1d1d; padding: 8px 16px; font: 14px system-ui, sans-serif; }
.book-page { font: 15px/1.55 system-ui, sans-serif; max-width: 1100px; margin: 0 auto; padding: 8px 16px; }
.book-page table { border-collapse: collapse; margin: 8px 0; }
.book-page td, .book-page th { border: 1px solid #d1d5db; padding: 3px 8px; text-align: left; vertical-align: top; }
.jp-RenderedImage img, .book-page img { max-width: 100%; height: auto; }
.jp-InputArea-editor, .jp-OutputArea-output pre { overflow-x: auto; }
a.anchor-link { display: none; }
.jp-Collapser { display: none; }
"""


@dataclass
class Chapter:
    stem: str
    run_dir: Path
    record: dict[str, Any]

    @property
    def info(self) -> dict[str, Any]:
        return self.record.get("run", {})

    @property
    def title(self) -> str:
        return self.info.get("title") or self.stem

    @property
    def page(self) -> str:
        return f"{self.stem}.html"

    @property
    def executed(self) -> Path:
        return self.run_dir / Path(self.info.get("notebook") or f"{self.stem}.ipynb").name


def chapters(book_dir: Path) -> list[Chapter]:
    """The run directories of a cookbook run, in chapter order."""
    found = [Chapter(read_record(d).get("stem") or d.name, d, read_record(d))
             for d in sorted(Path(book_dir).iterdir()) if (d / METRICS_FILE).is_file()]
    return sorted(found, key=lambda c: c.stem)


def provenance_line(info: dict[str, Any]) -> str:
    """commit, profile, machine, date, wall time and status of one run, for a page's header."""
    commit = str(info.get("git_commit") or "unknown")[:10] + (" (uncommitted changes)" if info.get("git_dirty") else "")
    parts = [f"profile <b>{_e(info.get('profile', '?'))}</b>", f"commit <code>{_e(commit)}</code>",
             f"{_e(info.get('device', '?'))}, {_e(info.get('cpus', '?'))} CPUs, host {_e(info.get('host', '?'))}",
             f"torch {_e(info.get('torch', '?'))}, deepspeed {_e(info.get('deepspeed', '?'))}, "
             f"python {_e(info.get('python', '?'))}",
             f"run {_e(info.get('started', '?'))}", f"{_e(info.get('wall_s', '?'))} s",
             f"status <b>{_e(info.get('status', 'missing'))}</b>"]
    return " · ".join(parts)


def build_site(book_dir: str | Path | None = None, out_dir: str | Path | None = None,
               errata: str | Path | None = ERRATA) -> Path:
    """Write the site of ``book_dir`` (default outputs/cookbook) into ``out_dir`` (default
    ``<book_dir>/site``); returns the index page."""
    book_dir = Path(book_dir) if book_dir else outputs_dir() / "cookbook"
    out_dir = Path(out_dir) if out_dir else book_dir / "site"
    found = chapters(book_dir) if book_dir.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no run records (*/{METRICS_FILE}) in {book_dir}: run `dslib cookbook` first")
    _clear_previous(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    errata = Path(errata) if errata and Path(errata).is_file() else None
    links = _site_links(errata is not None)
    files = ["index.html", "claims.html", "lab.css", "book.css", STAMP_FILE] + (["errata.html"] if errata else [])
    (out_dir / "book.css").write_text(BOOK_CSS)
    (out_dir / "lab.css").write_text(_lab_css())
    exporter = _exporter(out_dir)
    for i, chapter in enumerate(found):
        prev_ch, next_ch = found[i - 1] if i else None, found[i + 1] if i + 1 < len(found) else None
        files += _write_chapter(exporter, chapter, out_dir, _bar(links, prev_ch, next_ch))
    records = {c.run_dir: c.record for c in found}
    ledger = report.claims_ledger(records)
    _write_page(out_dir / "claims.html", "Claims ledger", _bar(links, None, None), _markdown(ledger),
                "Each claim's verdict, computed by the claims engine from this run's evidence rows.")
    if errata:
        _write_page(out_dir / "errata.html", "Errata", _bar(links, None, None), _markdown(errata.read_text()),
                    f"From {errata.name} in the repository.")
    _write_page(out_dir / "index.html", TITLE, _bar(links, None, found[0]),
                _index_body(found, book_dir), "")
    write_json_atomic(out_dir / STAMP_FILE, _stamp(found, book_dir, files))
    (out_dir / STAMP_FILE).chmod(0o644)
    return out_dir / "index.html"


def _write_chapter(exporter: Any, chapter: Chapter, out_dir: Path, bar: str) -> list[str]:
    import nbformat

    header = bar + f"<div class='book-provenance'>{provenance_line(chapter.info)}</div>"
    if chapter.info.get("status") != "ok":
        header += (f"<div class='book-failed'>This run did not finish: {_e(chapter.info.get('error') or 'no status')}. "
                   "The page shows the notebook as far as it ran.</div>")
    if not chapter.executed.is_file():
        _write_page(out_dir / chapter.page, chapter.title, bar, f"<p>No executed notebook in {_e(chapter.run_dir)}.</p>",
                    provenance_line(chapter.info))
        return [chapter.page]
    nb = _without_widgets(nbformat.read(chapter.executed, as_version=4))
    files_dir = f"{chapter.stem}_files"
    resources = {"output_files_dir": files_dir, "unique_key": chapter.stem,
                 "book_header": header, "book_footer": bar.replace("book-bar", "book-bar bottom", 1),
                 "metadata": {"name": chapter.title}}
    body, resources = exporter.from_notebook_node(nb, resources=resources)
    (out_dir / chapter.page).write_text(body)
    written = [chapter.page]
    if resources.get("outputs"):
        shutil.rmtree(out_dir / files_dir, ignore_errors=True)
        for name, data in resources["outputs"].items():
            path = out_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        written.append(files_dir)
    return written


def _exporter(site_dir: Path) -> Any:
    from jinja2 import pass_context
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
    from nbconvert.preprocessors import ExtractOutputPreprocessor
    from traitlets.config import Config

    class MathMLRenderer(IPythonRenderer):
        """Math as MathML at build time, instead of TeX left for MathJax to typeset."""

        def block_math(self, body: str) -> str:
            return _mathml(body, "block")

        def inline_math(self, body: str) -> str:
            return _mathml(body, "inline")

        def latex_environment(self, name: str, body: str) -> str:
            return _mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", "block")

        def link(self, text: str, url: str, title: str | None = None) -> str:
            return super().link(text, site_href(url, site_dir), title)

    class BookExporter(HTMLExporter):
        @pass_context
        def markdown2html(self, context: Any, source: str) -> str:
            cell = context.get("cell", {})
            renderer = MathMLRenderer(escape=False, attachments=cell.get("attachments", {}),
                                      anchor_link_text=self.anchor_link_text)
            return MarkdownWithMath(renderer=renderer).render(source)

    config = Config()
    config.ExtractOutputPreprocessor.output_filename_template = "{unique_key}_{cell_index}_{index}{extension}"
    exporter = BookExporter(config=config, template_name="lab", template_file=TEMPLATE,
                            extra_template_paths=[str(Path(__file__).parent)])
    exporter.register_preprocessor(ExtractOutputPreprocessor(config=config), enabled=True)
    return exporter


def site_href(url: str, site_dir: Path) -> str:
    """A notebook's link as the site in ``site_dir`` needs it: notebooks link to repository files
    relative to notebooks/ (``../docs/errata.md``, ``05_zero3.ipynb``); the errata and the chapters
    are pages of the site, any other file is linked where it lies in the repository."""
    if not url or "://" in url or url.startswith(("#", "mailto:")):
        return url
    path, _, anchor = url.partition("#")
    target = (REPO_ROOT / "notebooks" / path).resolve()
    if target == ERRATA.resolve():
        page = "errata.html"
    elif target.suffix == ".ipynb" and target.parent == (REPO_ROOT / "notebooks").resolve():
        page = target.with_suffix(".html").name
    else:
        page = os.path.relpath(target, Path(site_dir).resolve())
    return page + (f"#{anchor}" if anchor else "")


def _mathml(tex: str, display: str) -> str:
    from latex2mathml.converter import convert

    try:
        return convert(tex, display=display)
    except Exception:  # latex2mathml does not know every macro: show the TeX itself
        return f"<code>{_e(tex)}</code>"


def _without_widgets(nb: Any) -> Any:
    """Widget outputs need a widget manager from a CDN: keep their text form instead."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            output.get("data", {}).pop(WIDGET_VIEW, None)
    return nb


def _lab_css() -> str:
    """nbconvert's lab stylesheet and light theme, once for the whole site."""
    from nbconvert import HTMLExporter

    for base in HTMLExporter(template_name="lab").template_paths:
        static = Path(base) / "static"
        if (static / "index.css").is_file() and (static / "theme-light.css").is_file():
            return (static / "index.css").read_text() + "\n" + (static / "theme-light.css").read_text()
    raise FileNotFoundError("nbconvert's lab template stylesheet (lab/static/index.css) is not installed")


def _site_links(with_errata: bool) -> list[tuple[str, str]]:
    return [("index.html", TITLE), ("claims.html", "Claims ledger")] + ([("errata.html", "Errata")] if with_errata else [])


def _bar(links: list[tuple[str, str]], prev_ch: Chapter | None, next_ch: Chapter | None) -> str:
    items = [f"<a href='{href}'>{_e(text)}</a>" for href, text in links]
    if prev_ch:
        items.append(f"<a href='{prev_ch.page}' rel='prev'>&larr; {_e(prev_ch.title)}</a>")
    if next_ch:
        items.append(f"<a href='{next_ch.page}' rel='next'>{_e(next_ch.title)} &rarr;</a>")
    return f"<nav class='book-bar'>{''.join(f'<span>{i}</span>' for i in items)}</nav>"


def _index_body(found: list[Chapter], book_dir: Path) -> str:
    rows = "".join(
        f"<tr><td><a href='{c.page}'>{_e(c.title)}</a></td><td>{_e(c.info.get('status', 'missing'))}</td>"
        f"<td>{_e(c.info.get('profile', '?'))}</td><td>{_e(c.info.get('wall_s', ''))}</td>"
        f"<td><code>{_e(str(c.info.get('git_commit', ''))[:10])}</code></td><td>{len(c.record.get('figures', []))}</td>"
        f"<td>{_e(c.info.get('started', ''))}</td></tr>" for c in found)
    commits = sorted({str(c.info.get("git_commit", ""))[:10] for c in found})
    hosts = sorted({f"{c.info.get('device', '?')} ({c.info.get('host', '?')})" for c in found})
    return (f"<p>Every chapter of this book was executed by <code>dslib cookbook</code>; these pages are its "
            f"executed notebooks, with the figures and numbers that run measured. Built "
            f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} from the run records in "
            f"<code>{_e(book_dir.name)}/</code>; commit{'s' if len(commits) > 1 else ''} "
            f"{', '.join(f'<code>{_e(c)}</code>' for c in commits)}; machine {_e(', '.join(hosts))}.</p>"
            "<table><tr><th>chapter</th><th>status</th><th>profile</th><th>wall s</th><th>commit</th>"
            f"<th>figures</th><th>run</th></tr>{rows}</table>")


def _write_page(path: Path, title: str, bar: str, body: str, subtitle: str) -> None:
    path.write_text(f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                    f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
                    f"<link rel='stylesheet' href='book.css'></head><body>{bar}"
                    f"<main class='book-page'><h1>{_e(title)}</h1>"
                    f"{f'<p><i>{subtitle}</i></p>' if subtitle else ''}{body}</main>"
                    f"{bar.replace('book-bar', 'book-bar bottom', 1)}</body></html>")


def _markdown(text: str) -> str:
    import markdown

    return markdown.markdown(text, extensions=["tables", "fenced_code"])


def _stamp(found: list[Chapter], book_dir: Path, files: list[str]) -> dict[str, Any]:
    infos = [c.info for c in found]
    commits = sorted({str(i.get("git_commit", "")) for i in infos})
    return {"commit": commits[0] if len(commits) == 1 else commits, "dirty": any(i.get("git_dirty") for i in infos),
            "profiles": sorted({str(i.get("profile", "")) for i in infos}),
            "built": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source": str(book_dir),
            "chapters": [{"stem": c.stem, "title": c.title, "status": c.info.get("status"),
                          "started": c.info.get("started"), "wall_s": c.info.get("wall_s")} for c in found],
            "files": sorted(files)}


def _clear_previous(out_dir: Path) -> None:
    """Remove what an earlier build wrote (listed in its stamp), nothing else."""
    stamp = out_dir / STAMP_FILE
    if not stamp.is_file():
        return
    for name in json.loads(stamp.read_text()).get("files", []):
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)

"""The rendered book: built from real run records, offline, and read in headless Chromium."""
from __future__ import annotations

import html
import json
import re
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import nbformat
import pytest
from selenium.webdriver.support.ui import WebDriverWait
from browser import chromium, screenshot_dir  # noqa: F401 (fixture)
from conftest import write_notebook

from dslib.env import REPO_ROOT
from dslib.jobs import book
from dslib.jobs.cookbook import run_book
from dslib.claims import load_claims

# The reference may lag the last change to what produces the book by this much commit time
# (the lead regenerates it with `make book-reference` when chapters change).
REFERENCE_MARGIN = timedelta(days=14)
PRODUCES_THE_BOOK = ("notebooks", "dslib", "configs")
MAX_SHOT_PX = 8000  # screenshots show a page down to here
# Loaded resources (not hyperlinks): src=, <link href>, CSS url(), script imports.
EXTERNAL_RESOURCE = re.compile(r"""(?:\bsrc\s*=\s*["']?|<link[^>]*\bhref\s*=\s*["']?|url\(\s*["']?|import\(\s*["'])"""
                               r"""(?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def small_book(tmp_path_factory) -> Path:
    """Two chapters run by the real runner: one with prose, math, a table and a figure, one that fails."""
    folder = tmp_path_factory.mktemp("notebooks")
    first = write_notebook(folder / "00_alpha.ipynb", "n = 4",
                           "from dslib import jobs\nimport matplotlib.pyplot as plt\nimport pandas as pd\n"
                           "run = jobs.start('00_alpha')",
                           "fig, ax = plt.subplots()\nax.plot(range(n))\nrun.figure(fig, 'line', caption='a line')",
                           "run.metric('answer', 42.0)\n"
                           "pd.DataFrame(run.table('steps', [{'step': i, 'loss': 1 / (i + 1)} for i in range(n)]))")
    nb = nbformat.read(first, as_version=4)
    nb.cells.insert(2, nbformat.v4.new_markdown_cell(
        "## Candidates\nA band matches with probability $s^r$, so\n\n$$P = 1 - (1 - s^r)^b$$\n\n"
        "after [ZeRO](https://arxiv.org/abs/1910.02054)."))
    nbformat.write(nb, first)
    write_notebook(folder / "01_beta.ipynb", "k = 1",
                   "from dslib import jobs\nrun = jobs.start('01_beta')\nrun.metric('k', k)",
                   "raise ValueError('planned failure')")
    out = tmp_path_factory.mktemp("book")
    results, _ = run_book("smoke", folder=folder, out=out, echo=lambda *a, **k: None)
    assert [r.ok for r in results] == [True, False]
    return out


@pytest.fixture(scope="module")
def site(small_book, tmp_path_factory) -> Path:
    errata = tmp_path_factory.mktemp("docs") / "errata.md"
    errata.write_text("# Errata\n\n1. The article's *Lion* is not Lion.\n")
    return book.build_site(small_book, small_book / "site", errata=errata).parent


def test_site_has_every_chapter_with_provenance_and_navigation(site, small_book):
    index = (site / "index.html").read_text()
    assert "00_alpha.html" in index and "01_beta.html" in index and "claims.html" in index and "errata.html" in index
    alpha, beta = (site / "00_alpha.html").read_text(), (site / "01_beta.html").read_text()
    record = json.loads((small_book / "00_alpha" / "metrics.json").read_text())["run"]
    assert record["git_commit"][:10] in alpha and "profile <b>smoke</b>" in alpha
    assert re.search(r"01_beta.html.? rel=.next", alpha) and re.search(r"00_alpha.html.? rel=.prev", beta)
    assert "<math" in alpha and "P = 1" not in alpha, "math is rendered to MathML, not left as TeX"
    assert "run.metric('answer', 42.0)" in html.unescape(re.sub(r"<[^>]+>", "", alpha)), "code cells are on the page"
    assert "<table" in alpha and "loss" in alpha, "the notebook's table output is on the page"
    figures = re.findall(r'<img[^>]+src="([^"]+\.png)"', alpha)
    assert figures and all((site / f).is_file() and (site / f).stat().st_size > 1000 for f in figures)
    assert "did not finish" in beta and "planned failure" in beta
    claims = html.unescape((site / "claims.html").read_text())
    assert all(c.claim[:40] in claims for c in load_claims().values())
    assert "not Lion" in (site / "errata.html").read_text()


def test_site_without_errata_has_no_errata_page(small_book, tmp_path):
    index = book.build_site(small_book, tmp_path / "site", errata=tmp_path / "missing.md")
    assert not (index.parent / "errata.html").exists()
    assert "errata.html" not in "".join(p.read_text() for p in index.parent.glob("*.html"))


def test_rebuild_removes_only_what_the_last_build_wrote(small_book, tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "README.md").write_text("kept")
    book.build_site(small_book, out)
    (out / "00_alpha_files" / "stale.png").write_bytes(b"x")
    book.build_site(small_book, out)
    assert (out / "README.md").read_text() == "kept" and not (out / "00_alpha_files" / "stale.png").exists()


def _external_resources(folder: Path) -> list[str]:
    hits = []
    for path in [*folder.rglob("*.html"), *folder.rglob("*.css")]:
        hits += [f"{path.name}: {m.group(0)}" for m in EXTERNAL_RESOURCE.finditer(path.read_text(errors="replace"))]
    return hits


def test_site_loads_nothing_from_another_host(site):
    assert _external_resources(site) == []


def test_scan_finds_a_cdn_reference(tmp_path):
    """The offline scan above can fail: nbconvert's stock lab template references CDNs."""
    import nbconvert

    body, _ = nbconvert.HTMLExporter(template_name="lab").from_notebook_node(nbformat.v4.new_notebook())
    (tmp_path / "stock.html").write_text(body)
    assert _external_resources(tmp_path)


def _reference_or_skip() -> Path:
    if not (book.REFERENCE_DIR / book.STAMP_FILE).is_file():
        pytest.skip(f"no reference build in {book.REFERENCE_DIR.relative_to(REPO_ROOT)} yet (make book-reference)")
    return book.REFERENCE_DIR


@pytest.mark.parametrize("which", ["built", "reference"])
def test_every_page_opens_in_chromium_with_no_broken_image_or_link(which, request, chromium):
    folder = request.getfixturevalue("site") if which == "built" else _reference_or_skip()
    shots = screenshot_dir(f"book-{which}")
    pages = sorted(folder.glob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        chromium.get(page.as_uri())
        # a loaded machine can return from get() before every image has decoded: wait for each to settle
        WebDriverWait(chromium, 60).until(lambda d: d.execute_script(
            "return [...document.images].every(i => i.complete)"))
        state = chromium.execute_script("""
            return {images: [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]),
                    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
                    loaded: performance.getEntriesByType('resource').map(r => r.name),
                    title: document.title};""")
        assert all(ok for _, ok in state["images"]), f"{page.name}: broken images {state['images']}"
        local = [h.split("#")[0] for h in state["links"] if not re.match(r"(https?:|mailto:|#)", h)]
        assert all((folder / h).is_file() for h in local if h), f"{page.name}: broken links in {local}"
        assert all(u.startswith("file:") for u in state["loaded"]), f"{page.name} loaded {state['loaded']}"
        height = min(chromium.execute_script("return document.documentElement.scrollHeight"), MAX_SHOT_PX)
        chromium.set_window_size(1400, max(height, 600))
        chromium.save_screenshot(str(shots / f"{page.stem}.png"))
    print(f"{len(pages)} pages of {folder}; screenshots in {shots}")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()


def test_reference_build_is_current():
    """The reference (docs/book) must come from a clean commit in this history, no older than
    REFERENCE_MARGIN of commit time before the last change to notebooks/, dslib/ or configs/."""
    stamp = json.loads((_reference_or_skip() / book.STAMP_FILE).read_text())
    commit = stamp["commit"]
    assert isinstance(commit, str), f"the reference mixes runs of several commits: {commit}"
    assert not stamp["dirty"], "the reference was built from uncommitted changes: rebuild from a clean tree"
    assert stamp["profiles"] == ["cpu"], f"the reference is the cpu profile, not {stamp['profiles']}"
    try:
        _git("cat-file", "-e", f"{commit}^{{commit}}")
    except subprocess.CalledProcessError:
        pytest.fail(f"the reference's commit {commit[:10]} is not in this repository's history")
    last = _git("log", "-1", "--format=%H", "--", *PRODUCES_THE_BOOK)
    if subprocess.run(["git", "merge-base", "--is-ancestor", last, commit], cwd=REPO_ROOT).returncode == 0:
        return
    lag = (datetime.fromisoformat(_git("show", "-s", "--format=%cI", last))
           - datetime.fromisoformat(_git("show", "-s", "--format=%cI", commit)))
    assert lag <= REFERENCE_MARGIN, (f"docs/book is from {commit[:10]}, {lag} of commits older than the last change "
                                     f"to {', '.join(PRODUCES_THE_BOOK)} ({last[:10]}): run `make book-reference`")


def test_notebook_links_to_repository_files_become_site_links():
    """Notebooks link relative to notebooks/; on the site the errata and chapters are pages and any
    other repository file is linked where it lies (a link that resolved to nothing was broken)."""
    site = REPO_ROOT / "docs" / "book"
    assert book.site_href("../docs/errata.md", site) == "errata.html"
    assert book.site_href("05_zero3.ipynb#memory", site) == "05_zero3.html#memory"
    assert (site / book.site_href("../README.md", site)).resolve() == (REPO_ROOT / "README.md").resolve()
    assert book.site_href("https://arxiv.org/abs/1901.02860", site) == "https://arxiv.org/abs/1901.02860"

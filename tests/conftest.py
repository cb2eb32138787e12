"""Shared fixtures: tiny notebooks written on the fly for the runner tests."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest


def write_notebook(path: Path, params: str, *cells: str) -> Path:
    """A notebook with a markdown title, a tagged parameters cell, and code cells."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem} title"), nbformat.v4.new_code_cell(params)]
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def notebook_factory(tmp_path):
    def make(name: str, params: str, *cells: str) -> Path:
        return write_notebook(tmp_path / name, params, *cells)
    return make


# Tests log no runs to the repository's MLflow store (outputs/mlflow.db); test_tracking turns
# tracking on with a store of its own.
os.environ.setdefault("DSLIB_TRACKING", "0")

"""Every profile is checked against the notebooks it names: sections name real notebooks, every
parameter is one the notebook declares, every value converts to the type of its default; and
the gpu profile has a section for every chapter (one CUDA device: a chapter that needs more
says why in a comment and runs its code path on one rank)."""
from __future__ import annotations

import pytest
import yaml

from dslib.jobs.cookbook import select
from dslib.jobs.params import PROFILES_DIR, available_profiles, resolve

NOTEBOOKS = {nb.stem: nb for nb in select()}


@pytest.mark.parametrize("profile", available_profiles())
def test_profile_sections_name_notebooks_and_their_parameters(profile):
    sections = yaml.safe_load((PROFILES_DIR / f"{profile}.yaml").read_text()) or {}
    unknown = sorted(set(sections) - set(NOTEBOOKS) - {"default"})
    assert not unknown, f"{profile}.yaml has sections for no notebook: {unknown}"
    for notebook in NOTEBOOKS.values():
        resolve(notebook, profile)  # raises ParameterError naming the parameter


def test_gpu_profile_covers_every_chapter():
    sections = yaml.safe_load((PROFILES_DIR / "gpu.yaml").read_text())
    missing = sorted(set(NOTEBOOKS) - set(sections))
    assert not missing, f"gpu.yaml has no section for {missing}"

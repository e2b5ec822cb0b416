"""Optional dependencies: import them on first use, and say exactly what to install when one is missing.

```python
from omnimm.deps import require

torch = require("torch", extra="torch")          # the module, or MissingDependencyError
cv2 = require("cv2", extra="favchat", pip="opencv-python-headless")
```
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from types import ModuleType

from omnimm.errors import MissingDependencyError

DISTRIBUTION = "omnimm"

# Import names whose PyPI distribution is called something else.
_PIP_NAMES = {
    "cv2": "opencv-python-headless",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "av": "av",
    "open_clip": "open-clip-torch",
    "faiss": "faiss-cpu",
    "rouge_score": "rouge-score",
    "skimage": "scikit-image",
    "PIL": "pillow",
}


def install_hint(extra: str | None = None, *, pip: str | None = None) -> str:
    """The shell command that installs an extra of omnimm (or a plain package when no extra is known)."""
    if extra:
        return f'pip install "{DISTRIBUTION}[{extra}]"'
    return f"pip install {pip}" if pip else "pip install <the missing package>"


def is_available(module: str) -> bool:
    """True when `module` can be imported. Does not import it (only its parent packages, if dotted)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_dependency(
    module: str, *, extra: str | None = None, pip: str | None = None, purpose: str | None = None
) -> MissingDependencyError:
    """Build the error for a missing optional dependency (for callers that need to raise it themselves)."""
    pip = pip or _PIP_NAMES.get(module.split(".")[0], module.split(".")[0])
    needed_by = f"{purpose} needs" if purpose else "omnimm needs"
    message = (
        f"{needed_by} '{module}' (PyPI: {pip}), which is not installed. Install it with: {install_hint(extra, pip=pip)}"
    )
    return MissingDependencyError(message, package=module, extra=extra)


def require(
    module: str,
    *,
    extra: str | None = None,
    pip: str | None = None,
    min_version: str | None = None,
    purpose: str | None = None,
) -> ModuleType:
    """Import and return `module`; raise `MissingDependencyError` naming the extra if it is missing.

    Args:
        module: import name, e.g. `"torch"` or `"cv2"`.
        extra: the omnimm extra that installs it, e.g. `"valley"`; the error then says `pip install "omnimm[valley]"`.
        pip: the PyPI name when it differs from the import name and no extra provides it.
        min_version: oldest acceptable version (compared with the module's `__version__`).
        purpose: what needs it, for the message (e.g. `"encoder 'valley/stpool'"`).
    """
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as error:
        # Only a missing *module itself* (or a parent of it) is a missing dependency; a broken install of it is not.
        if error.name and not (module == error.name or module.startswith(error.name + ".")):
            raise
        raise missing_dependency(module, extra=extra, pip=pip, purpose=purpose) from error
    if min_version is not None:
        _check_version(imported, module, min_version, extra=extra, pip=pip)
    return imported


def _check_version(imported: ModuleType, module: str, min_version: str, *, extra: str | None, pip: str | None) -> None:
    from packaging.version import InvalidVersion, Version

    found = getattr(imported, "__version__", None)
    if found is None:
        return
    try:
        too_old = Version(str(found).split("+")[0]) < Version(min_version)
    except InvalidVersion:
        return
    if too_old:
        pip = pip or _PIP_NAMES.get(module, module)
        raise MissingDependencyError(
            f"'{module}' {found} is installed but omnimm needs >= {min_version}. "
            f"Upgrade with: {install_hint(extra, pip=pip)} --upgrade",
            package=module,
            extra=extra,
        )


@cache
def unmet_requirements(extra: str, distribution: str = DISTRIBUTION) -> tuple[str, ...]:
    """Requirements of `distribution[extra]` that are not installed (or installed at a wrong version).

    Reads the installed distribution's metadata; follows self-references such as `omnimm[torch]`. Returns an
    empty tuple when everything is there, or when the distribution or the extra is unknown.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        requirements = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return ()
    unmet: list[str] = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is None or not req.marker.evaluate({"extra": extra}):
            continue
        if req.name == distribution:
            for inner in req.extras:
                unmet.extend(unmet_requirements(inner, distribution))
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            unmet.append(str(req.name))
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            unmet.append(f"{req.name}{req.specifier} (found {installed})")
    return tuple(dict.fromkeys(unmet))


def known_extras(distribution: str = DISTRIBUTION) -> tuple[str, ...]:
    """The extras an installed distribution declares (empty when it is not installed)."""
    from importlib import metadata

    try:
        return tuple(metadata.metadata(distribution).get_all("Provides-Extra") or ())
    except metadata.PackageNotFoundError:
        return ()

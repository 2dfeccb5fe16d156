"""What the module needs from the Slicer it runs in, checked without importing any of it.

- The host: 3D Slicer 5.10 or newer. XDiffusionLib needs Python 3.10+ and Slicer 5.4 to 5.8 bundle
  Python 3.9 (Slicer 5.10 and 5.12 bundle 3.12).
- The worker's packages in Slicer's Python: PyTorch from the PyTorch extension (``PyTorchUtils``,
  which picks the CUDA or CPU build), the others through ``slicer.util.pip_install``. Each has a
  minimum version: a torch that another extension installed can be too old, and would only fail
  later, inside the worker, with an error about some missing function.

Versions are read from the installed distributions' metadata (``importlib.metadata``), so nothing
is imported into Slicer's process: the worker imports torch, in its own process.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..errors import XDiffusionError

MINIMUM_SLICER = (5, 10)
MINIMUM_PYTHON = (3, 10)


@dataclass(frozen=True)
class Requirement:
    """A distribution the worker imports, and the oldest version it works with."""

    name: str
    minimum: str

    @property
    def spec(self) -> str:
        return f"{self.name}>={self.minimum}"


TORCH = Requirement("torch", "2.1")
# Besides torch; the same minimums as pyproject.toml. psutil: the liveness check of a stale
# temporary's writer (``io.atomic.process_alive``); Slicer does not bundle it.
PACKAGES = (Requirement("diffusers", "0.30"), Requirement("safetensors", "0.4"), Requirement("scipy", "1.10"),
            Requirement("psutil", "5.9"))


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading release numbers of a version: "2.1.0+cu118" -> (2, 1, 0), "0.30.0.dev0" -> (0, 30, 0)."""
    numbers = []
    for part in str(text).split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
        if match.end() != len(part):
            break
    return tuple(numbers)


def installed_version(name: str) -> Optional[str]:
    """The installed version of distribution ``name``, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmet(requirement: Requirement) -> Optional[str]:
    """Why ``requirement`` is not met ("not installed", "version 1.13.1 is installed"), or None."""
    version = installed_version(requirement.name)
    if version is None:
        return "not installed"
    if version_tuple(version) < version_tuple(requirement.minimum):
        return f"version {version} is installed"
    return None


def dependency_problems() -> list[str]:
    """One line per unmet requirement of the worker: "torch>=2.1 (version 1.13.1 is installed)"."""
    return [f"{r.spec} ({why})" for r in (TORCH, *PACKAGES) if (why := unmet(r)) is not None]


def check_host(slicer_version: Optional[tuple[int, int]], python_version: tuple[int, ...] = tuple(sys.version_info)) -> None:
    """A one-line XDiffusionError when this Slicer (``None``: not the application) cannot run XDiffusion."""
    need = f"{MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]}"
    python = ".".join(str(n) for n in python_version[:3])
    if slicer_version is not None and tuple(slicer_version[:2]) < MINIMUM_SLICER:
        raise XDiffusionError(
            f"XDiffusion needs 3D Slicer {need} or newer; this is Slicer {slicer_version[0]}.{slicer_version[1]} "
            f"(Python {python}): install a newer Slicer from download.slicer.org")
    if tuple(python_version[:2]) < MINIMUM_PYTHON:
        raise XDiffusionError(f"XDiffusion needs Python {MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]} or newer "
                              f"(3D Slicer {need} or newer); this Python is {python}")


def ensure_dependencies(confirm: Callable[[str], bool], pytorch_utils: Any = None,
                        pip_install: Optional[Callable[[list[str]], Any]] = None) -> bool:
    """Install or update what the worker needs, asking ``confirm(text)`` before each step.

    ``pytorch_utils``: the PyTorch extension's ``PyTorchUtils`` module (None: not installed);
    ``pip_install``: ``slicer.util.pip_install``. Returns False when the user declined; raises
    XDiffusionError when a requirement cannot be met.
    """
    why = unmet(TORCH)
    if why is not None:
        if pytorch_utils is None:
            raise XDiffusionError(f"XDiffusion needs PyTorch {TORCH.minimum} or newer ({why}): install the "
                                  "'PyTorch' extension from the Extensions Manager, restart Slicer and try again")
        if why == "not installed":
            question = ("XDiffusion needs PyTorch, which is not installed yet.\n\nInstall it now with the PyTorch "
                        "extension? This downloads about 1-3 GB and may take several minutes.")
        else:
            question = (f"XDiffusion needs PyTorch {TORCH.minimum} or newer, but PyTorch {installed_version('torch')} "
                        "is installed (perhaps by another extension).\n\nUpdate it now with the PyTorch extension? "
                        "The update is shared by every extension that uses PyTorch; modules that have already "
                        "loaded the old version need a restart of Slicer.")
        if not confirm(question):
            return False
        torch_logic = pytorch_utils.PyTorchUtilsLogic()
        if torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=f">={TORCH.minimum}") is None:
            raise XDiffusionError("PyTorch could not be installed: see the Python console, or use the PyTorch Utils module")
        importlib.invalidate_caches()
        still = unmet(TORCH)
        if still is not None:
            raise XDiffusionError(f"PyTorch is still not {TORCH.minimum} or newer ({still}): restart Slicer and update "
                                  f"it in the PyTorch Utils module (version requirement >={TORCH.minimum})")
    needed = [r for r in PACKAGES if unmet(r) is not None]
    if needed:
        lines = [f"{r.spec} ({unmet(r)})" for r in needed]
        if not confirm("XDiffusion needs these Python packages:\n\n" + "\n".join(lines) + "\n\nInstall them now with pip?"):
            return False
        if pip_install is None:
            raise XDiffusionError(f"cannot install {', '.join(r.spec for r in needed)}: no pip available")
        pip_install([r.spec for r in needed])
        importlib.invalidate_caches()
        failed = [r.spec for r in needed if unmet(r) is not None]
        if failed:
            raise XDiffusionError(f"installing {', '.join(failed)} failed: see the Python console")
    return True


__all__ = ["MINIMUM_PYTHON", "MINIMUM_SLICER", "PACKAGES", "TORCH", "Requirement", "check_host",
           "dependency_problems", "ensure_dependencies", "installed_version", "unmet", "version_tuple"]

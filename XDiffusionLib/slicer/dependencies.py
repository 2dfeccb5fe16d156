"""What the module needs from the Slicer it runs in, checked without importing any of it.

- The host: 3D Slicer 5.10 or newer. XDiffusionLib needs Python 3.10+ and Slicer 5.4 to 5.8 bundle
  Python 3.9 (Slicer 5.10 and 5.12 bundle 3.12).
- The worker's packages in Slicer's Python: PyTorch from the PyTorch extension (``PyTorchUtils``,
  which picks the CUDA or CPU build), the others through ``slicer.util.pip_install``. Each has a
  minimum version: a torch that another extension installed can be too old, and would only fail
  later, inside the worker, with an error about some missing function.

- numpy: Slicer 5.10 and 5.12 bundle numpy 2, and a PyTorch older than 2.3 was built for numpy 1
  (its tensors cannot become arrays). Elsewhere PyTorch 2.3 or newer is then required (the PyTorch
  extension's update). On macOS, Slicer runs under Rosetta 2, where PyTorch stops at 2.2: there
  ``numpy<2`` is installed instead, after asking, and Slicer must restart (the running session keeps
  the numpy it loaded), as SlicerTotalSegmentator does.
- Updating a PyTorch that another module has already loaded into Slicer fails in pip on Windows,
  which locks the loaded files: that case is refused before anything is changed, with the restart
  advice, and a failed update says the same.

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
NUMPY2_TORCH = "2.3"  # the first PyTorch built for numpy 2
NUMPY1 = "numpy<2"  # what macOS gets instead (PyTorch stops at 2.2 under Rosetta 2)
PLATFORM = sys.platform  # "darwin", "win32", "linux"
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


def numpy_mismatch() -> Optional[str]:
    """Why the installed PyTorch cannot use the installed numpy ("numpy 2.0.2 is installed; PyTorch
    2.2.2 was built for numpy 1"), or None."""
    torch, numpy = installed_version("torch"), installed_version("numpy")
    if torch is None or numpy is None:
        return None
    if version_tuple(torch) < version_tuple(NUMPY2_TORCH) and version_tuple(numpy) >= (2,):
        return f"numpy {numpy} is installed; PyTorch {torch} was built for numpy 1"
    return None


def torch_requirement() -> Requirement:
    """PyTorch's minimum here: 2.1, or 2.3 beside numpy 2 where PyTorch can be updated (not macOS)."""
    if PLATFORM != "darwin" and numpy_mismatch() is not None:
        return Requirement(TORCH.name, NUMPY2_TORCH)
    return TORCH


def dependency_problems() -> list[str]:
    """One line per unmet requirement of the worker: "torch>=2.1 (version 1.13.1 is installed)"."""
    torch = torch_requirement()
    problems = []
    if (why := unmet(torch)) is not None:
        problems.append(f"{torch.spec} ({numpy_mismatch() if torch is not TORCH else why})")
    if PLATFORM == "darwin" and (why := numpy_mismatch()) is not None:
        problems.append(f"{NUMPY1} ({why})")
    return problems + [f"{r.spec} ({why})" for r in PACKAGES if (why := unmet(r)) is not None]


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
                        pip_install: Optional[Callable[[list[str]], Any]] = None,
                        restart: Optional[Callable[[], Any]] = None) -> bool:
    """Install or update what the worker needs, asking ``confirm(text)`` before each step.

    ``pytorch_utils``: the PyTorch extension's ``PyTorchUtils`` module (None: not installed);
    ``pip_install``: ``slicer.util.pip_install``; ``restart``: ``slicer.util.restart``, offered
    after a change that this Slicer session cannot take up (numpy<2 on macOS). Returns False when
    the user declined, or chose to restart; raises XDiffusionError when a requirement cannot be met.
    """
    if not _ensure_torch(confirm, pytorch_utils):
        return False
    if PLATFORM == "darwin" and (why := numpy_mismatch()) is not None:
        return _install_numpy1(why, confirm, pip_install, restart)
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


def _ensure_torch(confirm: Callable[[str], bool], pytorch_utils: Any) -> bool:
    """PyTorch through the PyTorch extension (installed, or updated when too old); False: declined."""
    requirement = torch_requirement()
    why = unmet(requirement)
    if why is None:
        return True
    version = installed_version("torch")
    if requirement is not TORCH:  # an installed PyTorch built for numpy 1, beside numpy 2
        why = numpy_mismatch()
    if pytorch_utils is None:
        raise XDiffusionError(f"XDiffusion needs PyTorch {requirement.minimum} or newer ({why}): install the "
                              "'PyTorch' extension from the Extensions Manager, restart Slicer and try again")
    restart_advice = (f"restart Slicer and press Reconstruct before any other module loads PyTorch (or update it "
                      f"first thing in the PyTorch Utils module, version requirement >={requirement.minimum})")
    if version is not None and PLATFORM == "win32" and "torch" in sys.modules:
        raise XDiffusionError(f"PyTorch {version} must be updated to {requirement.minimum} or newer ({why}), but it "
                              "is already loaded in this Slicer session and Windows locks its files: " + restart_advice)
    if version is None:
        question = ("XDiffusion needs PyTorch, which is not installed yet.\n\nInstall it now with the PyTorch "
                    "extension? This downloads about 1-3 GB and may take several minutes.")
    else:
        question = (f"XDiffusion needs PyTorch {requirement.minimum} or newer, but PyTorch {version} is installed "
                    f"({why}; perhaps installed by another extension).\n\nUpdate it now with the PyTorch extension? "
                    "The update is shared by every extension that uses PyTorch; modules that have already loaded "
                    "the old version need a restart of Slicer.")
    if not confirm(question):
        return False
    torch_logic = pytorch_utils.PyTorchUtilsLogic()
    try:
        installed = torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=f">={requirement.minimum}")
    except Exception as error:  # noqa: BLE001 - pip's own failure (files in use, no network): one line with the way out
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise XDiffusionError(f"installing PyTorch {requirement.minimum} or newer failed ({detail}): "
                              + restart_advice) from error
    if installed is None:
        raise XDiffusionError("PyTorch could not be installed: see the Python console, or use the PyTorch Utils module")
    importlib.invalidate_caches()
    still = unmet(requirement)
    if still is not None:
        raise XDiffusionError(f"PyTorch is still not {requirement.minimum} or newer ({still}): restart Slicer and "
                              f"update it in the PyTorch Utils module (version requirement >={requirement.minimum})")
    return True


def _install_numpy1(why: str, confirm: Callable[[str], bool], pip_install, restart) -> bool:
    """macOS: numpy<2 beside PyTorch 2.2 (the last release for Rosetta 2), then a restart of Slicer."""
    if not confirm(f"XDiffusion cannot run with the numpy that Slicer has: {why}. On macOS, Slicer runs under "
                   "Rosetta 2, where PyTorch 2.2 is the newest release.\n\nInstall numpy 1 (numpy<2) now with pip? "
                   "Slicer then needs a restart. Other modules that need numpy 2 may stop working."):
        return False
    if pip_install is None:
        raise XDiffusionError(f"cannot install {NUMPY1}: no pip available")
    pip_install([NUMPY1])
    importlib.invalidate_caches()
    if numpy_mismatch() is not None:
        raise XDiffusionError(f"installing {NUMPY1} failed ({numpy_mismatch()}): see the Python console")
    if restart is not None and confirm(f"numpy {installed_version('numpy')} is installed. Slicer must restart to "
                                       "use it.\n\nRestart Slicer now?"):
        restart()
        return False
    raise XDiffusionError(f"numpy {installed_version('numpy')} is installed, but this Slicer session still runs "
                          "the numpy it started with: restart Slicer, then press Reconstruct")


__all__ = ["MINIMUM_PYTHON", "MINIMUM_SLICER", "NUMPY1", "NUMPY2_TORCH", "PACKAGES", "TORCH", "Requirement",
           "check_host", "dependency_problems", "ensure_dependencies", "installed_version", "numpy_mismatch",
           "torch_requirement", "unmet", "version_tuple"]

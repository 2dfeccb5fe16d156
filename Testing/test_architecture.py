"""The library's layers hold (docs/architecture.md): no import circle, no upward import."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_architecture.py"


def load_checker():
    spec = importlib.util.spec_from_file_location("check_architecture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circle_and_no_upward_import_in_the_library():
    checker = load_checker()
    found = checker.modules()
    graph = checker.import_graph(found)
    assert len(found) > 50 and sum(len(t) for t in graph.values()) > 100  # it really read the library
    assert checker.cycles(graph) == []
    assert checker.upward_imports(graph) == []
    assert checker.unlayered(found) == []


def test_the_checker_sees_a_circle_an_upward_import_and_a_lazy_import(tmp_path):
    checker = load_checker()
    library = tmp_path / "XDiffusionLib"
    for folder in ("io", "model", "app"):
        (library / folder).mkdir(parents=True)
        (library / folder / "__init__.py").write_text("")
    (library / "__init__.py").write_text("")
    (library / "io" / "a.py").write_text("def f():\n    from ..model import b  # deferred, still a dependency\n")
    (library / "model" / "b.py").write_text("from ..io import a\n")
    (library / "app" / "c.py").write_text("from ..model.b import x\n")
    (library / "stray.py").write_text("")
    found = checker.modules(library)
    graph = checker.import_graph(found)
    assert checker.cycles(graph) == [["XDiffusionLib.io.a", "XDiffusionLib.model.b"]]
    assert checker.upward_imports(graph) == [("XDiffusionLib.io.a", "XDiffusionLib.model.b")]
    assert checker.unlayered(found) == ["XDiffusionLib.stray"]


# -- the same layers as import-linter contracts (pyproject.toml [tool.importlinter]) --------------

PYPROJECT = SCRIPT.parents[1] / "pyproject.toml"


def lint_imports(config: Path, cwd: Path, pythonpath: Path | None = None):
    import os
    import shutil
    import subprocess
    import sys

    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    environment = dict(os.environ, PYTHONUTF8="1", **({"PYTHONPATH": str(pythonpath)} if pythonpath else {}))
    # UTF-8 both ways whatever locale an earlier test left the process in (after the DICOM tests it
    # was ASCII, and lint-imports' report failed to decode).
    return subprocess.run([command, "--config", str(config), "--no-cache"], cwd=cwd, env=environment,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=120)


def test_the_import_linter_contracts_hold_for_the_library():
    run = lint_imports(PYPROJECT, PYPROJECT.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 kept, 0 broken" in run.stdout


def test_the_import_linter_contracts_catch_a_planted_circle_and_an_upward_import(tmp_path):
    """The pyproject's own contracts, pointed at a planted package (a copy of the layer names) with
    a circle through a deferred import and an upward import: both contracts break."""
    import tomllib

    settings = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]
    library = tmp_path / "plantedlib"
    for contract in settings["contracts"]:
        for layer in contract.get("layers", []):
            for name in layer.split(" : "):
                (library / name).mkdir(parents=True)
                (library / name / "__init__.py").write_text("")
    (library / "__init__.py").write_text("")
    (library / "io" / "a.py").write_text("def f():\n    from ..model import b  # deferred, still a dependency\n")
    (library / "model" / "b.py").write_text("from ..io import a\n")
    lines = ["[importlinter]", "root_package = plantedlib", ""]
    for contract in settings["contracts"]:
        lines.append(f"[importlinter:contract:{contract['id']}]")
        for key, value in contract.items():
            if key == "id":
                continue
            if key == "containers":
                value = ["plantedlib"]
            if key == "ancestors":
                value = ["plantedlib"]
            if isinstance(value, list):
                lines.append(f"{key} =\n" + "\n".join(f"    {item}" for item in value))
            else:
                lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
        lines.append("")
    config = tmp_path / ".importlinter"
    config.write_text("\n".join(lines))
    run = lint_imports(config, tmp_path, pythonpath=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "0 kept, 2 broken" in run.stdout, run.stdout
    assert "plantedlib.io.a -> plantedlib.model.b" in run.stdout


def test_the_script_and_the_contracts_name_the_same_layers():
    import tomllib

    settings = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]
    layers = next(c["layers"] for c in settings["contracts"] if c["type"] == "layers")
    assert [tuple(layer.split(" : ")) for layer in reversed(layers)] == list(load_checker().LAYERS)

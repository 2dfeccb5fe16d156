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

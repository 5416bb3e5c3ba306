"""The shape of the package is a contract too: the data path is visible in the folder tree, no
module imports itself in a circle, no module grows past ~400 lines, and the pipeline knows no
protocol."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edged"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every edged module ``name`` imports, anywhere in the file (lazy and TYPE_CHECKING imports too)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("edged"):
                found.add(t)
    return found


def test_no_import_cycle_in_edged():
    mods = modules()
    graph = {name: imports_of(name, path, set(mods)) for name, path in mods.items()}
    # a package's __init__ re-exporting its children is not a cycle of the children
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and mods[t].name == "__init__.py")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules: {long}"


def test_the_pipeline_knows_no_protocol():
    text = (PACKAGE / "pipeline.py").read_text()
    assert "pydicom" not in text and "sources.dicom" not in text


def test_one_definition_each_of_emitter_decoding_and_selection():
    names = {"class EventEmitter": [], "def decode_batch": [], "def select_backend": [], "def make_backend": [],
             "def activate": [], "def sigmoid": []}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for key in names:
            if f"\n{key}(" in text or f"\n{key}:" in text:
                names[key].append(str(path.relative_to(PACKAGE)))
    assert names["class EventEmitter"] == ["outbox/emitter.py"]
    assert names["def decode_batch"] == ["postprocess/decode.py"] and names["def sigmoid"] == ["postprocess/decode.py"]
    assert names["def select_backend"] == ["backends/selection.py"] == names["def make_backend"]
    assert names["def activate"] == [], "output decoding lives in edged/postprocess/decode.py only"


def test_the_data_path_is_the_folder_tree():
    for folder in ("sources", "spool", "preprocess", "batcher", "backends", "postprocess", "outbox", "mqtt"):
        assert (PACKAGE / folder / "__init__.py").exists(), folder

"""The package's shape, checked from its source: imports flow one way (no cycles, lower layers never
import the bank classes or the CLI), the store imports no torch, no module outgrows a reader's head."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adapterbank"
HEAVY = ("torch", "transformers", "peft", "safetensors.torch", "tokenizers")
LOWER_LAYERS = ("store", "core", "kinds", "routing")
BANK_MODULES = ("adapterbank.bank", "adapterbank.classify", "adapterbank.causal", "adapterbank.evaluation",
                "adapterbank.demo", "adapterbank_cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file (lazy imports inside functions included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            modules = {f"{target}.{alias.name}" for alias in node.names
                       if (PACKAGE.parent / Path(*f"{target}.{alias.name}".split("."))).with_suffix(".py").exists()}
            found |= modules or {target}  # `from . import x` of a module x imports x
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycles_between_modules():
    graph = _graph()
    packages = {name for name in graph if (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").exists()}
    # a package's __init__ re-exporting its own modules is its face, not a dependency
    edges = {name: {m for m in targets if not (name in packages and m.startswith(name + "."))}
             for name, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            assert state.get(target) != 1, "import cycle: " + " -> ".join(trail + [node, target])
            if target not in state:
                visit(target, trail + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_the_store_imports_no_torch_anywhere():
    for path in (PACKAGE / "store").rglob("*.py"):
        heavy = sorted(m for m in _imports(path) if any(m == h or m.startswith(h + ".") for h in HEAVY))
        assert not heavy, f"{path.relative_to(ROOT)} imports {heavy}"
    code = "import sys, adapterbank.store.registry, adapterbank.store.versions, adapterbank.store.verify; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_lower_layers_never_import_the_banks_or_the_cli():
    graph = _graph()
    for name, targets in graph.items():
        if name.split(".")[1:2] and name.split(".")[1] in LOWER_LAYERS:
            upward = sorted(t for t in targets if t.startswith(BANK_MODULES))
            assert not upward, f"{name} imports {upward}"


def test_the_registries_load_without_torch():
    """The CLI builds its choices from these registries at start-up: they must stay cheap."""
    code = ("import sys; from adapterbank_cli import main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_no_module_outgrows_four_hundred_lines():
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "cli").glob("*.py")]:
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= 420, f"{path.relative_to(ROOT)}: {lines} lines; split it"

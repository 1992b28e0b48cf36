"""The layout's rules, checked on the import graph of the source (every import, at any depth).

- include/pql is the product: it never imports Airflow, the Airflow adapters or the sandbox;
- no import circles between modules, in the product or in the sandbox;
- the sandbox uses the product only for its world loaders (never the other way);
- nothing outside crm/ knows which CRM it talks to (no branch on the CRM kind);
- no product module over ~400 lines without a reason in its docstring.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"pql": ROOT / "include" / "pql", "sandbox": ROOT / "include" / "sandbox",
           "pql_airflow": ROOT / "plugins" / "pql_airflow"}  # fmt: skip


def _module(path: Path, package: str, root: Path) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module(p, name, root): p
        for name, root in SOURCES.items()
        for p in root.rglob("*.py")
        if "__pycache__" not in p.parts
    }


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The known modules `path` imports (from X import y counts X.y when that is a module)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))  # fmt: skip
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


GRAPH = {m: _imports(p, m, set(_modules())) for m, p in _modules().items()}


def _cycles(nodes: set[str]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in nodes:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def _all_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_the_product_never_imports_airflow_its_adapters_or_the_sandbox():
    bad = {
        m: sorted(
            i for i in _all_imports(p) if i.split(".")[0] in ("airflow", "sandbox", "pql_airflow")
        )  # fmt: skip
        for m, p in _modules().items()
        if m.split(".")[0] == "pql"
    }
    assert {m: v for m, v in bad.items() if v} == {}


@pytest.mark.parametrize("package", ["pql", "sandbox", "pql_airflow"])
def test_no_import_circles(package):
    nodes = {m for m in GRAPH if m.split(".")[0] == package}
    # A package's __init__ importing its own submodules is how Python packages work.
    cycles = [c for c in _cycles(nodes) if not all(x.startswith(c[0]) for x in c)]
    assert cycles == []


CRM_BRANCH = re.compile(
    r"""kind\s*[=!]=\s*["'](hubspot|salesforce)["']|["'](hubspot|salesforce)["']\s*[=!]=\s*[\w.]*kind"""
    r"""|crm\.kind\s*(==|!=|\bin\b)"""
)
# What the rest of the code may import from crm/: the interface, settings, routing's policy.
CRM_DOORS = {"pql.crm", "pql.crm.targets", "pql.crm.routing"}


def _outside_crm() -> dict[str, Path]:
    files = {
        m: p
        for m, p in _modules().items()
        if m.split(".")[0] in ("pql", "pql_airflow") and not m.startswith("pql.crm")
    }
    files.update({f"dags.{p.stem}": p for p in (ROOT / "dags").glob("*.py")})
    return files


def test_only_crm_knows_which_crm_it_talks_to():
    found = []
    for p in _outside_crm().values():
        for line in p.read_text().splitlines():
            if CRM_BRANCH.search(line.split("#")[0]):
                found.append(f"{p.relative_to(ROOT)}: {line.strip()}")
        for i in _all_imports(p):
            if i.startswith("pql.crm") and i not in CRM_DOORS:
                found.append(f"{p.relative_to(ROOT)}: imports {i}")
            if i.split(".")[0] in ("hubspot", "simple_salesforce"):
                found.append(f"{p.relative_to(ROOT)}: imports {i}")
    assert found == []


def test_long_product_modules_say_why():
    long = []
    for m, p in _modules().items():
        if m.split(".")[0] != "pql":
            continue
        lines = p.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        if lines > 400 and "long because" not in doc.lower():
            long.append(f"{p.relative_to(ROOT)} ({lines} lines)")
    assert long == []


def test_no_two_product_classes_share_a_name():
    seen: dict[str, list[str]] = {}
    for m, p in _modules().items():
        if m.split(".")[0] not in ("pql", "pql_airflow"):
            continue
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, ast.ClassDef):
                seen.setdefault(node.name, []).append(m)
    assert {name: mods for name, mods in seen.items() if len(mods) > 1} == {}

"""Item 16.3: imports flow one way.

The AST of every module in pipeline/ and viewer/ is read (function-level imports included:
a lazy import is still a dependency). Rules:

* the core never imports the GUI package: no module under pipeline/ imports ``viewer``, except
  the ``surgitwin view`` command (pipeline/commands/viewer.py), which opens the window
  (``viewer.app``) and nothing else of it; headless rendering lives in pipeline/render/;
* no import cycles among the modules of pipeline/ and viewer/.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUI_LAUNCHER = "pipeline.commands.viewer"


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("pipeline", "viewer"):
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, mods: dict) -> set[str]:
    """Modules of pipeline/ and viewer/ that ``name`` imports (``from pkg import submodule``
    counts as the submodule, not the package)."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - node.level + 1]
                mod = ".".join(stem + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(mod)
    out = set()
    for m in found:
        while m and m not in mods:
            m = m.rpartition(".")[0]
        if m and m != name:
            out.add(m)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(n, p, mods) for n, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_the_core_never_imports_the_viewer():
    graph = _graph()
    bad = {n: sorted(m for m in deps if m.split(".")[0] == "viewer")
           for n, deps in graph.items() if n.split(".")[0] == "pipeline"}
    bad = {n: v for n, v in bad.items() if v}
    assert bad.pop(GUI_LAUNCHER, ["viewer.app"]) == ["viewer.app"], "surgitwin view may import viewer.app only"
    assert not bad, f"core modules import the GUI package (render through pipeline.render): {bad}"


def test_no_import_cycles_in_pipeline_and_viewer():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_core_modules_that_render_load_no_viewer_module():
    code = ("import sys, pipeline.run, pipeline.scene.report, pipeline.render.offscreen, pipeline.commands.viewer; "
            "bad=sorted(m for m in sys.modules if m.split('.')[0] == 'viewer'); print(bad); sys.exit(bool(bad))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_old_viewer_module_names_are_the_moved_modules():
    import pipeline.render.offscreen as offscreen
    import pipeline.render.views as views
    import viewer.render
    import viewer.tools
    import viewer.views

    assert viewer.render is offscreen and viewer.views is views
    assert viewer.tools.record_primitives is __import__("pipeline.render.primitives").render.primitives.record_primitives

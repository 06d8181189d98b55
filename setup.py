"""Build hook only (metadata lives in pyproject.toml): a wheel that installs anywhere.

The repository keeps its layout (``pipeline/``, ``viewer/``, ``configs/``, ...) and an editable
install reads it in place. A non-editable build (``make wheel``) turns it into one top-level
package that cannot collide with other distributions:

- ``pipeline/`` and ``viewer/`` become ``surgitwin/pipeline/`` and ``surgitwin/viewer/``; their
  absolute imports (``from pipeline.x import y``, ``import viewer.x as v``) are rewritten to
  ``surgitwin.pipeline.x`` / ``surgitwin.viewer.x`` token by token (:func:`rewrite_imports`: the
  import statements are found with ``ast``, only the package name token is replaced, everything
  else stays byte for byte). Code that names its own modules by string derives them from
  ``__package__`` / ``__name__``, so it works in both layouts.
- ``configs/``, ``models/`` and ``sample_scans/`` travel as package data in
  ``surgitwin/pipeline/_data/`` (read through importlib.resources by
  :func:`pipeline.config.data_root`).
- The wheel's console script ``surgitwin`` points at ``surgitwin.pipeline.cli:main``, and its
  ``top_level.txt`` names ``surgitwin`` only; an editable install keeps ``pipeline.cli:main``.
"""
from __future__ import annotations

import ast
import io
import re
import shutil
import tokenize
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

try:  # setuptools >= 70.1 ships bdist_wheel; older ones take it from the wheel package
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:  # nothing here builds wheels (an editable install still works)
        bdist_wheel = None

NAMESPACE = "surgitwin"
PACKAGES = ("pipeline", "viewer")
DATA = ("configs", "models", "sample_scans")


def rewrite_imports(source: str, packages=PACKAGES, namespace: str = NAMESPACE, filename: str = "<source>") -> str:
    """``source`` with its absolute imports of ``packages`` moved under ``namespace``.

    ``from pipeline.x import y`` -> ``from surgitwin.pipeline.x import y``; ``import pipeline.x as
    p`` -> ``import surgitwin.pipeline.x as p``. Relative imports, strings, comments and every
    other token are left alone. ``import pipeline.x`` without ``as`` would bind a different name
    after the move, so it is refused (a ValueError naming the file and line) instead of guessed.
    """
    tree = ast.parse(source, filename=filename)
    starts: set[tuple[int, int]] = set()  # (line, byte column) where a package name token starts
    froms: set[tuple[int, int]] = set()  # (line, byte column) of a `from` keyword to rewrite
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in packages:
            froms.add((node.lineno, node.col_offset))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in packages:
                    continue
                if alias.asname is None:
                    raise ValueError(f"{filename}:{alias.lineno}: `import {alias.name}` binds `{alias.name.split('.')[0]}`;"
                                     f" write `from {alias.name.rpartition('.')[0] or alias.name} import ...` or"
                                     f" `import {alias.name} as ...` so that the wheel's namespace can be applied")
                starts.add((alias.lineno, alias.col_offset))
    if not starts and not froms:
        return source
    lines = io.StringIO(source).readlines()  # the same lines tokenize sees (split on "\n" only)
    edits: list[tuple[int, int, int]] = []  # (line, char column, length) of each name token to prefix
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type not in (tokenize.NL, tokenize.COMMENT, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                                tokenize.ENDMARKER)]
    for i, tok in enumerate(tokens):
        line, col = tok.start
        byte_col = len(lines[line - 1][:col].encode("utf-8"))
        if tok.type == tokenize.NAME and tok.string == "from" and (line, byte_col) in froms:
            name = tokens[i + 1]
        elif tok.type == tokenize.NAME and (line, byte_col) in starts:
            name = tok
        else:
            continue
        if name.type != tokenize.NAME or name.string not in packages:
            raise ValueError(f"{filename}:{line}: expected a package name after the import keyword, found {name.string!r}")
        edits.append((name.start[0], name.start[1], len(name.string)))
    if len(edits) != len(starts) + len(froms):
        raise ValueError(f"{filename}: found {len(edits)} of {len(starts) + len(froms)} imports to rewrite")
    for line, col, n in sorted(edits, reverse=True):
        text = lines[line - 1]
        lines[line - 1] = f"{text[:col]}{namespace}.{text[col:col + n]}{text[col + n:]}"
    out = "".join(lines)
    left = [n.lineno for n in ast.walk(ast.parse(out)) if
            (isinstance(n, ast.ImportFrom) and n.level == 0 and (n.module or "").split(".")[0] in packages)
            or (isinstance(n, ast.Import) and any(a.name.split(".")[0] in packages for a in n.names))]
    if left:
        raise ValueError(f"{filename}: imports left unrewritten on lines {left}")
    return out


def namespace_tree(build_lib: Path, packages=PACKAGES, namespace: str = NAMESPACE) -> Path:
    """Move the built ``packages`` under ``build_lib/namespace`` and rewrite their imports."""
    ns = build_lib / namespace
    if ns.exists():
        shutil.rmtree(ns)
    ns.mkdir(parents=True)
    (ns / "__init__.py").write_text(f'"""surgitwin: {", ".join(packages)} of the surgitwin source tree, installed '
                                    f'under one namespace ({namespace}.pipeline, ...)."""\n')
    for pkg in packages:
        if (build_lib / pkg).is_dir():
            shutil.move(str(build_lib / pkg), str(ns / pkg))
    for py in sorted(ns.rglob("*.py")):
        text = py.read_text(encoding="utf-8")
        new = rewrite_imports(text, packages, namespace, filename=str(py.relative_to(build_lib)))
        if new != text:
            py.write_text(new, encoding="utf-8")
    return ns


def namespace_entry_points(text: str, packages=PACKAGES, namespace: str = NAMESPACE, *, undo: bool = False) -> str:
    """``name = pipeline.cli:main`` -> ``name = surgitwin.pipeline.cli:main`` (entry_points.txt);
    ``undo`` turns it back (the source layout an editable install runs)."""
    prefix = rf"{re.escape(namespace)}\." if undo else ""
    pattern = re.compile(rf"^(\s*[^=\[#;\s][^=]*=\s*){prefix}((?:{'|'.join(map(re.escape, packages))})[.:])", re.M)
    return pattern.sub(lambda m: f"{m.group(1)}{'' if undo else namespace + '.'}{m.group(2)}", text)


def build_namespaced(build_lib: Path, root: Path) -> Path:
    """The wheel's tree in ``build_lib``: the packages under the namespace, the data beside them."""
    ns = namespace_tree(build_lib)
    dest = ns / "pipeline" / "_data"
    for name in DATA:
        if (root / name).is_dir():
            shutil.copytree(root / name, dest / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return ns


class BuildWithData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        build_namespaced(Path(self.build_lib), Path(__file__).resolve().parent)


COMMANDS: dict = {"build_py": BuildWithData}
if bdist_wheel is not None:
    class WheelUnderNamespace(bdist_wheel):
        def egg2dist(self, egginfo_path, distinfo_path):
            super().egg2dist(egginfo_path, distinfo_path)
            dist = Path(distinfo_path)
            eps = dist / "entry_points.txt"
            if eps.is_file():
                eps.write_text(namespace_entry_points(eps.read_text()))
            if (dist / "top_level.txt").is_file():
                (dist / "top_level.txt").write_text(f"{NAMESPACE}\n")

    COMMANDS["bdist_wheel"] = WheelUnderNamespace


class EditableInPlace(editable_wheel):
    """An editable install runs the source layout (``pipeline.cli:main``). Its dist-info may be the
    one prepared for a wheel (pip reuses prepare_metadata_for_build_editable's, which setuptools
    makes with bdist_wheel): the namespace is taken off it again."""

    def _ensure_dist_info(self):
        super()._ensure_dist_info()
        dist = Path(self.dist_info_dir)
        eps = dist / "entry_points.txt"
        if eps.is_file():
            eps.write_text(namespace_entry_points(eps.read_text(), undo=True))
        if (dist / "top_level.txt").is_file():
            (dist / "top_level.txt").write_text("".join(f"{p}\n" for p in PACKAGES))


COMMANDS["editable_wheel"] = EditableInPlace


if __name__ == "__main__":
    setup(cmdclass=COMMANDS)

"""The packages' import rules (README, "Layout of the repository"), read from the source: a
module that imports upward (an extractor importing the job, the job importing a command)
fails here, wherever the import sits (module level or inside a function)."""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOWED = {
    "schemas": {"schemas"},
    "extractors": {"schemas", "extractors"},
    "readers": {"schemas", "readers"},
    "pipelines": {"schemas", "extractors", "pipelines"},
    "reports": {"schemas", "extractors", "pipelines", "reports"},
    "commands": {"schemas", "extractors", "pipelines", "reports", "readers", "commands"},
}


def _imported_packages(path: str) -> set[str]:
    """The ``actprep.<package>`` names a module imports."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n.split(".")[1] for n in names if n.startswith("actprep.") and n.count(".") >= 1}


def test_every_package_has_a_rule():
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    (roots,) = [ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ROOTS"]
    assert set(roots) == set(ALLOWED)


def test_imports_point_one_way():
    wrong = []
    for package, allowed in ALLOWED.items():
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    for target in sorted(_imported_packages(path) - allowed):
                        wrong.append(f"{os.path.relpath(path, ROOT)} imports actprep.{target}")
    assert not wrong, "\n".join(wrong)

"""The import rules of docs/architecture.md, read from the source (every import, also inside functions).

aipt (the core)  ← ingest, worker, aipt.cli       nothing in the core imports ingest, worker or the CLI
aipt.queue       the only code that imports arq or redis
aipt.cli         a thin layer over the core: no ingest, no worker
ingest, worker   each imports the core, never the other
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module of the product and the modules it imports (absolute names)."""
    found: dict[str, set[str]] = {}
    for package in ("aipt", "ingest", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            found[module_of(path)] = names
    return found


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def cli(module: str) -> bool:
    """The CLI: aipt.cli, and aipt.__main__ (`python -m aipt`), which only calls it."""
    return within(module, "aipt.cli") or module == "aipt.__main__"


def breaking(rule) -> list[str]:
    return sorted(
        f"{module} imports {name}" for module, names in imports().items() for name in names if rule(module, name)
    )


def test_the_rules_see_the_whole_product():
    found = imports()
    assert {"aipt.queue.runner", "aipt.cli.events", "ingest.app", "worker.consume", "aipt.runtime"} <= set(found)


def test_only_the_queue_package_imports_arq_or_redis():
    assert breaking(lambda m, n: within(n, "arq", "redis") and not within(m, "aipt.queue")) == []


def test_the_core_imports_neither_the_processes_nor_the_cli():
    core = lambda m: within(m, "aipt") and not cli(m)  # noqa: E731
    assert breaking(lambda m, n: core(m) and within(n, "ingest", "worker", "aipt.cli")) == []


def test_the_cli_is_a_thin_layer_over_the_core():
    assert breaking(lambda m, n: cli(m) and within(n, "ingest", "worker")) == []


def test_ingest_and_worker_do_not_import_each_other_or_the_cli():
    assert breaking(lambda m, n: within(m, "ingest") and within(n, "worker", "aipt.cli")) == []
    assert breaking(lambda m, n: within(m, "worker") and within(n, "ingest", "aipt.cli")) == []


def test_the_processes_are_named_not_imported_by_the_core():
    """aipt.runtime starts them by import string, as a Procfile or uvicorn's command line does."""
    from aipt import runtime

    assert (runtime.WEB_APP, runtime.WORKER_SPEC) == ("ingest.app:create_app", "worker.main:spec")
    assert callable(runtime.load(runtime.WORKER_SPEC)) and callable(runtime.load(runtime.WEB_APP))

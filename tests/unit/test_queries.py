"""aipt/queries.sql: every query the code asks for by name exists, every named query is used, and every
name is written out in full (grep finds each caller)."""

from __future__ import annotations

import ast
from pathlib import Path

from aipt import db

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("aipt", "ingest", "worker", "bench")


def sources():
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def lookups():
    """(file:line, the subscript of every `queries[...]`)."""
    for path, tree in sources():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "queries"
            ):
                yield f"{path.relative_to(ROOT)}:{node.lineno}", node.slice


def test_every_name_is_written_out_in_full():
    built = [where for where, key in lookups() if isinstance(key, ast.JoinedStr | ast.BinOp)]
    assert built == [], "query names built from pieces (write each one out): " + ", ".join(built)


def test_every_name_asked_for_exists():
    literals = [(where, key.value) for where, key in lookups() if isinstance(key, ast.Constant)]
    assert literals, "no lookup found: has the way queries are looked up changed?"
    assert [(where, name) for where, name in literals if name not in db.queries] == []


def test_every_named_query_is_used_and_every_name_the_code_writes_is_one():
    """A name may travel in a variable (a dict of names by kind, an argument): then it is written out as a
    string somewhere in the code all the same."""
    strings = {
        node.value
        for _, tree in sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    assert sorted(set(db.queries) - strings) == [], "named queries nothing uses: delete them"


def test_each_query_has_a_comment_saying_what_it_is_for():
    text = (ROOT / "aipt" / "queries.sql").read_text()
    for name in db.queries:
        after = text.split(f"-- {name} --\n", 1)[1]
        assert after.startswith("-- "), f"{name} has no comment line under its name"

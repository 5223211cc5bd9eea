"""The migration runner's statement splitter: statements end where psql ends them, line numbers kept."""

from aipt import migrate


def test_split_respects_quotes_dollar_quotes_and_comments():
    sql = """-- a comment; not a statement
create function f() returns text language sql as $$ select 'a;b' $$;
select 'it''s; fine', E'back\\\\slash\\'; still', "odd;name" from t; /* block; /* nested; */ comment */
do $body$ begin perform 1; end $body$;

select $1, x$y from t
"""
    statements = migrate.split(sql)
    assert [s.line for s in statements] == [2, 3, 4, 6]
    assert statements[0].sql == "create function f() returns text language sql as $$ select 'a;b' $$"
    assert statements[1].sql.endswith('"odd;name" from t')
    assert statements[2].head == "do $body$ begin perform 1; end $body$"
    assert statements[3].sql == "select $1, x$y from t"


def test_every_schema_file_splits_into_statements_that_end_where_psql_ends_them():
    for m in migrate.discover():
        statements = m.statements()
        assert statements, m.name
        # Every statement starts with a keyword, never inside a quote or a body.
        for s in statements:
            first = s.head.split()[0].lower()
            assert first in {
                "create",
                "alter",
                "drop",
                "do",
                "comment",
                "revoke",
                "grant",
                "insert",
                "update",
                "delete",
                "select",
            }, (m.name, s.line, s.head)

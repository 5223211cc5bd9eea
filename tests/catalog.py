"""A comparable picture of the public schema: what two databases must share to count as identical.

Names, definitions, security settings and privileges; not OIDs, column positions or data.
"""

from __future__ import annotations

import asyncpg

# Privileges are compared as sorted lists: the same grants in another order are the same grants.
QUERIES = {
    "functions": """
        select p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
               p.prosecdef, p.provolatile, coalesce(p.proconfig, '{}'), p.prosrc,
               coalesce(array(select a::text from unnest(p.proacl) a order by 1), '{}')
        from pg_proc p where p.pronamespace = 'public'::regnamespace""",
    "relations": """
        select c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity, coalesce(c.reloptions, '{}'),
               coalesce(array(select a::text from unnest(c.relacl) a order by 1), '{}')
        from pg_class c where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'S')""",
    "columns": """
        select c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
               pg_get_expr(d.adbin, d.adrelid)
        from pg_attribute a
        join pg_class c on c.oid = a.attrelid
        left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v')
          and a.attnum > 0 and not a.attisdropped""",
    "views": "select viewname, definition from pg_views where schemaname = 'public'",
    "indexes": "select tablename, indexname, indexdef from pg_indexes where schemaname = 'public'",
    "constraints": """
        select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        from pg_constraint where connamespace = 'public'::regnamespace""",
    "policies": """
        select tablename, policyname, permissive, roles, cmd, qual, with_check
        from pg_policies where schemaname = 'public'""",
    "triggers": """
        select t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid)
        from pg_trigger t join pg_class c on c.oid = t.tgrelid
        where c.relnamespace = 'public'::regnamespace and not t.tgisinternal""",
}


async def fingerprint(conn: asyncpg.Connection) -> dict[str, list[tuple]]:
    picture = {}
    for name, sql in QUERIES.items():
        picture[name] = sorted(tuple(r) for r in await conn.fetch(sql))
    return picture

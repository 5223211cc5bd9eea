-- =============================================================================
-- Production infrastructure checks, runnable with psql on any database where
-- the migrations ran (production included):
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f tests/sql/test-production-infrastructure.sql
--
-- Stops with an error on the first wrong result (exit status 3 under
-- ON_ERROR_STOP). Everything happens in one transaction that is rolled back:
-- no data is left behind. Run it as the role that ran the migrations (it
-- switches to anon, authenticated and service_role as PostgREST does).
--
-- Each concern is one file under parts/, included below. The helpers here are
-- theirs to use:
--   pg_temp.expect(ok, what)                  raises 'check failed: <what>' unless ok is true
--   pg_temp.expect_error(sql, sqlstate, what) runs sql, raises unless it fails with that SQLSTATE
--   pg_temp.act_as(role, sub, admin)          switches role and JWT claims like PostgREST
--                                             (role null: back to the session's own role)
-- =============================================================================

\set ON_ERROR_STOP 1
\set QUIET 1
-- Only the \echo progress lines and a failure are printed, not query results.
\o /dev/null
set client_min_messages = warning;

begin;

create function pg_temp.expect(p_ok boolean, p_what text)
returns void
language plpgsql
as $$
begin
  if p_ok is not true then
    raise exception 'check failed: %', p_what;
  end if;
end
$$;

create function pg_temp.expect_error(p_sql text, p_sqlstate text, p_what text)
returns void
language plpgsql
as $$
begin
  begin
    execute p_sql;
  exception
    when others then
      if sqlstate <> p_sqlstate then
        raise exception 'check failed: % (expected SQLSTATE %, got %: %)', p_what, p_sqlstate, sqlstate, sqlerrm;
      end if;
      return;
  end;
  raise exception 'check failed: % (no error from: %)', p_what, p_sql;
end
$$;

create function pg_temp.act_as(p_role text, p_sub uuid default null, p_admin boolean default false)
returns void
language plpgsql
as $$
begin
  reset role;
  perform pg_catalog.set_config('request.jwt.claims', case when p_role is null then '' else
    jsonb_strip_nulls(jsonb_build_object(
      'role', p_role,
      'sub', p_sub,
      'app_metadata', case when p_admin then jsonb_build_object('role', 'admin') end))::text end, true);
  if p_role is not null then
    execute format('set local role %I', p_role);
  end if;
end
$$;

\ir parts/soft_delete.sql
\ir parts/rate_limit.sql
\ir parts/stripe_events.sql

rollback;

\o
\echo all checks passed

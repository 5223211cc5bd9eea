-- =============================================================================
-- Supabase compatibility
-- On Supabase every object below already exists and this file changes nothing:
-- it creates, and grants on, only what is missing, so it needs no right in the
-- auth schema there (newer projects give the postgres role none).
-- On plain PostgreSQL (tests, local development) it creates the minimum the
-- other migrations rely on: the roles PostgREST switches to, the auth schema,
-- auth.users, and auth.uid() / auth.jwt() / auth.role() reading the request's
-- JWT claims exactly as PostgREST sets them (request.jwt.claims).
--
-- This file replaces its first version, which granted on Supabase's own auth
-- functions and created auth.users "if not exists" (a statement that needs the
-- right to create in auth even when the table is there). Where that version
-- ran it created what this one would (its grants on Supabase's auth functions
-- only repeated what PUBLIC has), so `aipt migrate` accepts it as this one:
-- aipt:replaces sha256:876f96875266bf48746fa1d312f943444420c11551ceb27060b799203de74f82
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Roles: anon (no JWT), authenticated (a signed-in user), service_role (server
-- keys; bypasses row-level security as on Supabase).
-- -----------------------------------------------------------------------------
do $$
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
end
$$;

-- The API roles use schema public. Granted only where a role lacks it, so a
-- project's existing grants are left exactly as they are.
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if not pg_catalog.has_schema_privilege(r, 'public', 'USAGE') then
      execute format('grant usage on schema public to %I', r);
    end if;
  end loop;
end
$$;

-- -----------------------------------------------------------------------------
-- The auth schema, auth.users (only the columns this project reads), and
-- auth.jwt(), auth.uid(), auth.role(): each created, and granted, only where
-- missing, so a Supabase database keeps its own definitions and grants.
-- -----------------------------------------------------------------------------
do $$
begin
  if to_regnamespace('auth') is null then
    create schema auth;
    grant usage on schema auth to anon, authenticated, service_role;
  end if;

  if to_regclass('auth.users') is null then
    create table auth.users (
      id uuid primary key default gen_random_uuid(),
      email text,
      raw_app_meta_data jsonb not null default '{}'::jsonb,
      created_at timestamptz not null default now()
    );
  end if;

  if to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb
    language sql stable
    as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
      )::jsonb
    $f$;
    grant execute on function auth.jwt() to anon, authenticated, service_role;
  end if;

  if to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid
    language sql stable
    as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
      )::uuid
    $f$;
    grant execute on function auth.uid() to anon, authenticated, service_role;
  end if;

  if to_regprocedure('auth.role()') is null then
    create function auth.role() returns text
    language sql stable
    as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
      )::text
    $f$;
    grant execute on function auth.role() to anon, authenticated, service_role;
  end if;
end
$$;

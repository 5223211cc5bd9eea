-- =============================================================================
-- Who is an admin
-- One definition used by every policy and admin-only function:
--   * a JWT whose app_metadata.role is 'admin' (set by the dashboard, not the user),
--   * the service_role or a role that is a member of it (server-side keys,
--     scheduled jobs; on Supabase the postgres role that pg_cron uses),
--   * a database superuser (an operator in psql, migrations, the worker).
-- =============================================================================

-- The role to judge is the one the session switched to (SET ROLE, as PostgREST
-- does), not current_user: inside a SECURITY DEFINER function current_user is
-- the function's owner, which would make every caller an admin.
create or replace function public.is_admin()
returns boolean
language sql
stable
set search_path = ''
as $$
  select
    coalesce(auth.jwt() -> 'app_metadata' ->> 'role', '') = 'admin'
    or coalesce(auth.jwt() ->> 'role', '') = 'service_role'
    or exists (
      select 1
      from pg_catalog.pg_roles r
      where r.rolname = coalesce(nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text)
        and (r.rolsuper or pg_catalog.pg_has_role(r.oid, 'service_role', 'member'))
    )
$$;

comment on function public.is_admin() is
  'True for an admin JWT (app_metadata.role = admin), the service_role, or a superuser session.';

revoke all on function public.is_admin() from public;
grant execute on function public.is_admin() to anon, authenticated, service_role;

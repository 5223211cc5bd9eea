-- =============================================================================
-- Who is an admin, second version: public.user_roles too
--
-- The deployed shop keeps its admins in public.user_roles (role 'admin'; the
-- web app's studio checks f_is_admin_current_user()). is_admin() now honours
-- those rows as well as what 05_admin.sql recognises:
--   * a JWT whose app_metadata.role is 'admin' (set by the dashboard, not the user),
--   * a user whose public.user_roles row says 'admin',
--   * the service_role or a role that is a member of it,
--   * a database superuser.
-- Never user_metadata: a user writes that about themselves.
--
-- user_roles is created where it is missing, in the deployed shape. The
-- deployed table had no row-level security, so anyone (anon included) could
-- make any user an admin: now a user reads their own row, and only admins
-- write.
-- =============================================================================

do $$
begin
  if to_regtype('public.app_role') is null then
    create type public.app_role as enum ('admin', 'member');
  end if;
end
$$;

create table if not exists public.user_roles (
  user_id uuid primary key references auth.users (id) on delete cascade,
  role public.app_role not null default 'member',
  created_at timestamptz not null default now()
);

comment on table public.user_roles is
  'Application roles of users: role admin makes a user an admin (public.is_admin()). Admins write; a user reads their own row.';

-- -----------------------------------------------------------------------------
-- is_admin(). SECURITY DEFINER so it reads user_roles past row-level security
-- (whose policies call it). The role it judges is the one the session switched
-- to (SET ROLE, as PostgREST does), not current_user, which here is the owner.
-- -----------------------------------------------------------------------------
create or replace function public.is_admin()
returns boolean
language sql
stable
security definer
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
    or exists (
      select 1
      from public.user_roles ur
      where ur.user_id = auth.uid() and ur.role = 'admin'
    )
$$;

comment on function public.is_admin() is
  'True for an admin JWT (app_metadata.role = admin), a user_roles admin, the service_role, or a superuser session.';
revoke all on function public.is_admin() from public, anon, authenticated, service_role;
grant execute on function public.is_admin() to anon, authenticated, service_role;

-- -----------------------------------------------------------------------------
-- Row-level security on user_roles
-- -----------------------------------------------------------------------------
alter table public.user_roles enable row level security;

do $$
declare
  p record;
begin
  -- Whatever policies the table had (the deployed one had none) give way to these.
  for p in select policyname from pg_catalog.pg_policies where schemaname = 'public' and tablename = 'user_roles' loop
    execute format('drop policy %I on public.user_roles', p.policyname);
  end loop;
end
$$;

create policy user_roles_read on public.user_roles for select
  using (user_id = (select auth.uid()) or (select public.is_admin()));
create policy user_roles_admin_write on public.user_roles for all
  using ((select public.is_admin())) with check ((select public.is_admin()));

revoke all on public.user_roles from public, anon, authenticated, service_role;
grant select, insert, update, delete on public.user_roles to authenticated;
grant select, insert, update, delete on public.user_roles to service_role;

-- -----------------------------------------------------------------------------
-- The deployed helpers (17_admin_roles_policies.sql), where they exist, keep
-- their signatures: f_is_admin_current_user() is is_admin(); f_is_admin(uuid)
-- answers about that user's user_roles row, for an admin or about oneself.
-- -----------------------------------------------------------------------------
do $$
begin
  if to_regprocedure('public.f_is_admin_current_user()') is not null then
    create or replace function public.f_is_admin_current_user()
    returns boolean
    language sql
    stable
    set search_path = ''
    as $f$
      select public.is_admin()
    $f$;
    comment on function public.f_is_admin_current_user() is
      'The deployed name of public.is_admin(): is the caller an admin?';
    revoke all on function public.f_is_admin_current_user() from public, anon, authenticated, service_role;
    grant execute on function public.f_is_admin_current_user() to anon, authenticated, service_role;
  end if;

  if to_regprocedure('public.f_is_admin(uuid)') is not null then
    create or replace function public.f_is_admin(p_user uuid)
    returns boolean
    language sql
    stable
    set search_path = ''
    as $f$
      select exists (select 1 from public.user_roles ur where ur.user_id = p_user and ur.role = 'admin')
    $f$;
    comment on function public.f_is_admin(uuid) is
      'True when that user''s user_roles row says admin. Row-level security applies: users see only their own row.';
    revoke all on function public.f_is_admin(uuid) from public, anon, authenticated, service_role;
    grant execute on function public.f_is_admin(uuid) to authenticated, service_role;
  end if;
end
$$;

-- -----------------------------------------------------------------------------
-- A user's e-mail, for admins only (null for anyone else): the admin views
-- (v_rate_limit_top_users, v_*_deleted) show it, as the deployed ones did.
-- Definer: auth.users is not readable by the API roles.
-- -----------------------------------------------------------------------------
create or replace function public.admin_user_email(p_user_id uuid)
returns text
language sql
stable
security definer
set search_path = ''
as $$
  select u.email::text from auth.users u where u.id = p_user_id and public.is_admin()
$$;

comment on function public.admin_user_email(uuid) is
  'The e-mail of a user, for an admin; null for anyone else.';
revoke all on function public.admin_user_email(uuid) from public, anon, authenticated, service_role;
grant execute on function public.admin_user_email(uuid) to authenticated, service_role;

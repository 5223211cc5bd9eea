-- =============================================================================
-- Content access: what the shop sells is read only by those who paid
--
-- content_full is the product. Through the tables nobody but an admin reads
-- a neuron at all: neither its body nor, if it is a draft, that it exists.
-- Everyone else gets the body from
--   public.f_neuron_content(p_neuron_id)      the body, or SQLSTATE 42501 with a reason
--   public.f_has_neuron_access(p_neuron_id)   the same decision, as a boolean
-- which let through
--   * an admin (public.is_admin());
--   * the buyer of the neuron, or of a live bundle that holds it (a live link);
--   * a user with an active (or trialing), unexpired, not ended subscription
--     whose plan_tier reaches the neuron's required_tier;
-- and only for a published, live neuron (admins: any neuron).
--
-- The catalogue (no content_full) is public through two views, as the
-- deployed shop had it: v_neuron_public (published, live neurons) and
-- v_bundle_public (live bundles and how many live neurons they hold). Signed-in
-- users also read live bundles and their links to listed neurons through the
-- tables. (A column grant cannot keep the body from non-admins and give it to
-- admins: both are the authenticated role. Row-level security can, by rows.)
--
-- The body column is content_full, the deployed shop's name: the first
-- version of 10_content.sql called it body.
-- =============================================================================

do $$
begin
  if exists (select 1 from pg_catalog.pg_attribute
             where attrelid = 'public.neurons'::regclass and attname = 'body' and not attisdropped)
     and not exists (select 1 from pg_catalog.pg_attribute
                     where attrelid = 'public.neurons'::regclass and attname = 'content_full' and not attisdropped) then
    alter table public.neurons rename column body to content_full;
  end if;
end
$$;

comment on column public.neurons.content_full is
  'The product: read by admins through the table, by everyone else through public.f_neuron_content().';

-- Whether a neuron is in the public catalogue (published and live): what the
-- links' policy asks. Definer: the caller may not read neurons.
create or replace function public.neuron_is_listed(p_neuron_id uuid)
returns boolean
language sql
stable
security definer
set search_path = ''
as $$
  select exists (select 1 from public.neurons n where n.id = p_neuron_id and n.published and n.deleted_at is null)
$$;

comment on function public.neuron_is_listed(uuid) is
  'True when the neuron is published and not deleted: in the public catalogue (v_neuron_public).';
revoke all on function public.neuron_is_listed(uuid) from public, anon, authenticated, service_role;
grant execute on function public.neuron_is_listed(uuid) to anon, authenticated, service_role;

-- -----------------------------------------------------------------------------
-- Row-level security. Whatever policies these tables had (the deployed 17 and
-- 23 and this project's first versions) give way to these; one admin check
-- per statement (an InitPlan), not one per row.
-- -----------------------------------------------------------------------------
do $$
declare
  p record;
begin
  for p in
    select tablename, policyname from pg_catalog.pg_policies
    where schemaname = 'public' and tablename in ('neurons', 'bundles', 'bundle_neurons')
  loop
    execute format('drop policy %I on public.%I', p.policyname, p.tablename);
  end loop;
end
$$;

alter table public.neurons enable row level security;
alter table public.bundles enable row level security;
alter table public.bundle_neurons enable row level security;

-- Admins only: the rows carry the body.
create policy neurons_admin on public.neurons for all
  using ((select public.is_admin())) with check ((select public.is_admin()));

-- Live bundles; admins read every row.
create policy bundles_read on public.bundles for select
  using (deleted_at is null or (select public.is_admin()));
create policy bundles_admin_write on public.bundles for all
  using ((select public.is_admin())) with check ((select public.is_admin()));

-- Live links to listed neurons (a draft in a bundle stays hidden).
create policy bundle_neurons_read on public.bundle_neurons for select
  using ((deleted_at is null and public.neuron_is_listed(neuron_id)) or (select public.is_admin()));
create policy bundle_neurons_admin_write on public.bundle_neurons for all
  using ((select public.is_admin())) with check ((select public.is_admin()));

-- -----------------------------------------------------------------------------
-- Grants. Signed-in users hold the table privileges admins need (row-level
-- security keeps the others out). Rows leave only through f_hard_delete_*()
-- (23_neuron_delete_guard.sql), so nobody is granted DELETE on neurons or
-- bundles. Anonymous callers have the views.
-- -----------------------------------------------------------------------------
revoke all on public.neurons, public.bundles, public.bundle_neurons from public, anon, authenticated, service_role;
grant select, insert, update on public.neurons to authenticated;
grant select, insert, update on public.bundles to authenticated;
grant select, insert, update, delete on public.bundle_neurons to authenticated;
grant select, insert, update, delete on public.neurons, public.bundles, public.bundle_neurons to service_role;

-- -----------------------------------------------------------------------------
-- The public catalogue. Created where missing; the deployed shop's own views
-- (with its price and category columns) are kept as they are. Both run with
-- the owner's rights past row-level security and filter for themselves;
-- security_barrier keeps a caller's functions from seeing rows they filter.
-- Read-only for everyone: a view over one table is updatable, and the
-- deployed grants let anon update the catalogue through it.
-- -----------------------------------------------------------------------------
do $$
begin
  if to_regclass('public.v_neuron_public') is null then
    create view public.v_neuron_public as
    select n.id, n.slug, n.title, n.summary, n.required_tier, n.created_at
    from public.neurons n
    where n.published and n.deleted_at is null;
  end if;
  if to_regclass('public.v_bundle_public') is null then
    create view public.v_bundle_public as
    select b.id, b.slug, b.title, b.description, b.required_tier, b.created_at,
           (select count(*) from public.bundle_neurons bn
             join public.neurons n on n.id = bn.neuron_id
            where bn.bundle_id = b.id and bn.deleted_at is null and n.published) as items
    from public.bundles b
    where b.deleted_at is null;
  end if;
end
$$;

alter view public.v_neuron_public set (security_barrier = true);
alter view public.v_bundle_public set (security_barrier = true);
comment on view public.v_neuron_public is 'The public catalogue: published, live neurons, without content_full.';
comment on view public.v_bundle_public is 'The public catalogue: live bundles and the number of neurons they hold.';

revoke all on public.v_neuron_public, public.v_bundle_public from public, anon, authenticated, service_role;
grant select on public.v_neuron_public, public.v_bundle_public to anon, authenticated, service_role;

-- -----------------------------------------------------------------------------
-- The access decision. Internal: judges one user (null: nobody signed in).
-- Returns the neuron's body and null, or null and the reason it is refused.
-- -----------------------------------------------------------------------------
create or replace function public._neuron_access(p_neuron_id uuid, out body text, out refused text)
language plpgsql
stable
set search_path = ''
as $$
declare
  v_user constant uuid := auth.uid();
  n record;
begin
  select x.content_full, x.published, x.deleted_at, x.required_tier::integer as tier
    into n from public.neurons x where x.id = p_neuron_id;
  if public.is_admin() then
    if not found then
      refused := 'no such neuron';
    else
      body := n.content_full;
    end if;
    return;
  end if;
  if not found or not n.published or n.deleted_at is not null then
    refused := 'no such neuron, or it is not published';
  elsif v_user is null then
    refused := 'sign in to read this neuron';
  elsif exists (select 1 from public.user_purchases p where p.user_id = v_user and p.neuron_id = p_neuron_id)
     or exists (select 1
                from public.user_purchases p
                join public.bundles b on b.id = p.bundle_id
                join public.bundle_neurons bn on bn.bundle_id = b.id
               where p.user_id = v_user and bn.neuron_id = p_neuron_id
                 and b.deleted_at is null and bn.deleted_at is null)
     or exists (select 1
                from public.user_subscriptions s
               where s.user_id = v_user
                 and s.status in ('active', 'trialing')
                 and s.ended_at is null
                 and (s.expires_at is null or s.expires_at > now())
                 and s.plan_tier >= n.tier) then
    body := n.content_full;
  else
    refused := format('buy this neuron, a bundle that holds it, or a plan of tier %s or higher', n.tier);
  end if;
end
$$;

comment on function public._neuron_access(uuid) is
  'Internal: the caller''s access to a neuron''s content_full (body, or the reason it is refused).';
revoke all on function public._neuron_access(uuid) from public, anon, authenticated, service_role;

-- The body of a neuron for whoever may read it; SQLSTATE 42501 with the reason otherwise.
-- Definer: reads content_full, purchases and subscriptions, which the caller may not.
create or replace function public.f_neuron_content(p_neuron_id uuid)
returns text
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  a record;
begin
  select * into a from public._neuron_access(p_neuron_id);
  if a.refused is not null then
    raise exception 'no access to neuron %: %', p_neuron_id, a.refused using errcode = 'insufficient_privilege';
  end if;
  return a.body;
end
$$;

comment on function public.f_neuron_content(uuid) is
  'The neuron''s content_full for an admin, its buyer, the buyer of a live bundle holding it, or a subscriber of its tier; 42501 otherwise.';
revoke all on function public.f_neuron_content(uuid) from public, anon, authenticated, service_role;
grant execute on function public.f_neuron_content(uuid) to anon, authenticated, service_role;

-- Whether f_neuron_content would return the body.
-- Definer: reads purchases and subscriptions, which the caller may not.
create or replace function public.f_has_neuron_access(p_neuron_id uuid)
returns boolean
language sql
stable
security definer
set search_path = ''
as $$
  select a.refused is null from public._neuron_access(p_neuron_id) a
$$;

comment on function public.f_has_neuron_access(uuid) is
  'True when public.f_neuron_content() would give the caller this neuron''s body.';
revoke all on function public.f_has_neuron_access(uuid) from public, anon, authenticated, service_role;
grant execute on function public.f_has_neuron_access(uuid) to anon, authenticated, service_role;

-- -----------------------------------------------------------------------------
-- The deployed shop's f_can_access_neuron(uuid, plan_tier), where it exists,
-- keeps answering for signed-in users, who no longer read neurons: it runs as
-- the owner now. It says whether a plan tier reaches a listed neuron, nothing
-- more.
-- -----------------------------------------------------------------------------
do $$
begin
  if to_regtype('public.plan_tier') is null then
    return;  -- nothing deployed here
  end if;
  if to_regprocedure('public.f_can_access_neuron(uuid, public.plan_tier)') is not null then
    alter function public.f_can_access_neuron(uuid, public.plan_tier) security definer set search_path = public, pg_temp;
    revoke all on function public.f_can_access_neuron(uuid, public.plan_tier) from public, anon, authenticated, service_role;
    grant execute on function public.f_can_access_neuron(uuid, public.plan_tier) to anon, authenticated, service_role;
  end if;
end
$$;

-- =============================================================================
-- Soft delete and delete guards for neurons and bundles
--
-- Content that people paid for must never disappear from under them, and a
-- mistaken delete must be undoable. So:
--   * a delete is first a soft delete (deleted_at is set; the row is hidden
--     from everyone but admins) and can be restored;
--   * a guard refuses to delete content that a live bundle holds, an active
--     subscription reaches, or somebody bought;
--   * a hard delete happens only 90 days after the soft delete, guard re-checked;
--   * every soft delete, restore and hard delete is kept in an append-only
--     audit trail (content_deletion_log).
--
-- A link (bundle_neurons row) is live exactly when its bundle and its neuron
-- are both live. Deleting either end takes its live links down; restoring an
-- end brings back those of its links whose other end is live, and no other:
-- a link another, still standing delete took down stays down.
--
-- The web app calls the f_* functions through Supabase RPC; admins call them
-- from psql; `aipt content ...` calls them for operators. Admin means
-- public.is_admin() (05_admin.sql).
--
-- Upgrades in place a database where the first version of this file ran
-- (same names; no deleted_at on bundle_neurons; views joining auth.users for
-- e-mails; functions with search_path = public; a full unique slug).
-- Re-running this file changes nothing.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Columns: who deleted what, when and why
-- -----------------------------------------------------------------------------
alter table public.neurons
  add column if not exists deleted_at timestamptz,
  add column if not exists deleted_by uuid,
  add column if not exists deletion_reason text;

alter table public.bundles
  add column if not exists deleted_at timestamptz,
  add column if not exists deleted_by uuid,
  add column if not exists deletion_reason text;

-- A link is down while either of its ends is deleted (see the header).
alter table public.bundle_neurons
  add column if not exists deleted_at timestamptz;

-- deleted_by references auth.users, and losing a user must not lose the
-- content they deleted: on delete set null. The first version referenced
-- auth.users without that action, so any other foreign key on deleted_by is
-- replaced by this one.
do $$
declare
  t text;
  c record;
begin
  foreach t in array array['neurons', 'bundles'] loop
    for c in
      select con.conname
      from pg_catalog.pg_constraint con
      join pg_catalog.pg_attribute a on a.attrelid = con.conrelid and a.attnum = any (con.conkey)
      where con.conrelid = ('public.' || t)::regclass
        and con.contype = 'f'
        and a.attname = 'deleted_by'
        and (con.conname <> (t || '_deleted_by_fkey') or con.confdeltype <> 'n')
    loop
      execute format('alter table public.%I drop constraint %I', t, c.conname);
    end loop;
    if not exists (
      select 1 from pg_catalog.pg_constraint con
      where con.conrelid = ('public.' || t)::regclass and con.conname = t || '_deleted_by_fkey'
    ) then
      execute format(
        'alter table public.%I add constraint %I foreign key (deleted_by) references auth.users (id) on delete set null',
        t, t || '_deleted_by_fkey');
    end if;
  end loop;
end
$$;

-- Links of content deleted before links had their own deleted_at (first
-- version) go down with it. A no-op once every link follows its ends.
update public.bundle_neurons bn
set deleted_at = b.deleted_at
from public.bundles b
where b.deleted_at is not null and bn.bundle_id = b.id and bn.deleted_at is null;

update public.bundle_neurons bn
set deleted_at = n.deleted_at
from public.neurons n
where n.deleted_at is not null and bn.neuron_id = n.id and bn.deleted_at is null;

-- -----------------------------------------------------------------------------
-- Indexes: live lookups stay fast, and a deleted row never blocks re-creating
-- its slug. A full unique index or constraint on slug alone (the first
-- version had one) would, so it goes.
-- -----------------------------------------------------------------------------
do $$
declare
  i record;
begin
  for i in
    select ix.indexrelid::regclass as index_name, ix.indrelid::regclass as table_name, con.conname
    from pg_catalog.pg_index ix
    join pg_catalog.pg_attribute a on a.attrelid = ix.indrelid and a.attnum = ix.indkey[0]
    left join pg_catalog.pg_constraint con on con.conindid = ix.indexrelid and con.conrelid = ix.indrelid
    where ix.indrelid in ('public.neurons'::regclass, 'public.bundles'::regclass)
      and ix.indisunique
      and ix.indnkeyatts = 1
      and a.attname = 'slug'
      and ix.indpred is null
  loop
    if i.conname is not null then
      execute format('alter table %s drop constraint %I', i.table_name, i.conname);
    else
      execute format('drop index %s', i.index_name);
    end if;
  end loop;
end
$$;

create unique index if not exists neurons_slug_live_key on public.neurons (slug) where deleted_at is null;
create unique index if not exists bundles_slug_live_key on public.bundles (slug) where deleted_at is null;

-- What the deleted views and the 90-day cleanup read.
create index if not exists neurons_deleted_at_idx on public.neurons (deleted_at) where deleted_at is not null;
create index if not exists bundles_deleted_at_idx on public.bundles (deleted_at) where deleted_at is not null;

-- The guards count active subscriptions at or above a tier.
create index if not exists user_subscriptions_active_tier_idx
  on public.user_subscriptions (plan_tier, expires_at)
  where status in ('active', 'trialing') and ended_at is null;

-- -----------------------------------------------------------------------------
-- Audit trail: every soft delete, restore and hard delete, append-only.
-- No foreign keys, so it outlives the content and the users it names; a
-- snapshot of slug and title keeps it readable after a hard delete.
-- -----------------------------------------------------------------------------
create table if not exists public.content_deletion_log (
  id bigint generated always as identity primary key,
  occurred_at timestamptz not null default now(),
  action text not null check (action in ('soft_delete', 'restore', 'hard_delete')),
  content_kind text not null check (content_kind in ('neuron', 'bundle')),
  content_id uuid not null,
  slug text not null,
  title text not null,
  actor_id uuid,                -- auth.uid(); null for a scheduler or an operator without a JWT
  actor_role text not null,     -- the database role the call ran as; 'unrecorded' for deletes made before this trail
  reason text,
  cascaded jsonb not null default '[]'::jsonb  -- the bundle_neurons links taken down, brought back or removed
);

create index if not exists content_deletion_log_content_idx on public.content_deletion_log (content_id, id);

-- Append-only for everyone, the owner included: a trail that can be edited
-- proves nothing. (A superuser can still disable the trigger, deliberately.)
create or replace function public.tg_content_deletion_log_append_only()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception 'public.content_deletion_log is append-only (% refused)', tg_op
    using errcode = 'insufficient_privilege';
end
$$;

revoke all on function public.tg_content_deletion_log_append_only() from public, anon, authenticated, service_role;

drop trigger if exists content_deletion_log_append_only on public.content_deletion_log;
create trigger content_deletion_log_append_only
  before update or delete on public.content_deletion_log
  for each row execute function public.tg_content_deletion_log_append_only();

drop trigger if exists content_deletion_log_no_truncate on public.content_deletion_log;
create trigger content_deletion_log_no_truncate
  before truncate on public.content_deletion_log
  for each statement execute function public.tg_content_deletion_log_append_only();

-- Admins read the trail; only the functions below (running as the owner) write it.
alter table public.content_deletion_log enable row level security;

drop policy if exists content_deletion_log_admin_read on public.content_deletion_log;
create policy content_deletion_log_admin_read on public.content_deletion_log
  for select using ((select public.is_admin()));

revoke all on public.content_deletion_log from public, anon, authenticated, service_role;
grant select on public.content_deletion_log to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- Soft delete goes through the functions, not table writes. They run as the
-- table owner; anybody else (admins through the API, service_role) may not
-- set or change the deletion columns, nor DELETE content rows, so nobody can
-- skip the guard, the 90 days or the audit trail by writing the table.
-- -----------------------------------------------------------------------------

-- Trigger on neurons and bundles. Plain (not SECURITY DEFINER): it judges the
-- writer, and inside the functions below the writer is the owner.
create or replace function public.tg_content_deletion_columns()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if pg_catalog.pg_has_role(
       current_user,
       (select c.relowner from pg_catalog.pg_class c where c.oid = tg_relid),
       'member') then
    return case when tg_op = 'DELETE' then old else new end;
  end if;
  if tg_op = 'DELETE' then
    raise exception 'rows of public.% are removed by public.f_hard_delete_%(), not DELETE',
      tg_table_name, left(tg_table_name, -1)
      using errcode = 'insufficient_privilege';
  end if;
  if (tg_op = 'INSERT' and num_nonnulls(new.deleted_at, new.deleted_by, new.deletion_reason) > 0)
     or (tg_op = 'UPDATE' and (new.deleted_at, new.deleted_by, new.deletion_reason)
                              is distinct from (old.deleted_at, old.deleted_by, old.deletion_reason)) then
    raise exception 'deleted_at, deleted_by and deletion_reason of public.% change only through public.f_soft_delete_%() and public.f_restore_%()',
      tg_table_name, left(tg_table_name, -1), left(tg_table_name, -1)
      using errcode = 'insufficient_privilege';
  end if;
  return new;
end
$$;

revoke all on function public.tg_content_deletion_columns() from public, anon, authenticated, service_role;

drop trigger if exists neurons_deletion_columns on public.neurons;
create trigger neurons_deletion_columns
  before insert or update or delete on public.neurons
  for each row execute function public.tg_content_deletion_columns();

drop trigger if exists bundles_deletion_columns on public.bundles;
create trigger bundles_deletion_columns
  before insert or update or delete on public.bundles
  for each row execute function public.tg_content_deletion_columns();

-- Trigger on bundle_neurons: a new (or re-pointed) link is live exactly when
-- both its ends are, whoever writes it; otherwise its deleted_at is left to
-- the functions. Admins may still add and remove links: that edits a bundle.
create or replace function public.tg_bundle_neurons_liveness()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' or (new.bundle_id, new.neuron_id) is distinct from (old.bundle_id, old.neuron_id) then
    new.deleted_at := (
      select coalesce(b.deleted_at, n.deleted_at)
      from public.bundles b, public.neurons n
      where b.id = new.bundle_id and n.id = new.neuron_id);
  elsif new.deleted_at is distinct from old.deleted_at
        and not pg_catalog.pg_has_role(
          current_user,
          (select c.relowner from pg_catalog.pg_class c where c.oid = tg_relid),
          'member') then
    raise exception 'a link''s deleted_at follows its bundle and neuron; use the soft delete and restore functions'
      using errcode = 'insufficient_privilege';
  end if;
  return new;
end
$$;

revoke all on function public.tg_bundle_neurons_liveness() from public, anon, authenticated, service_role;

drop trigger if exists bundle_neurons_liveness on public.bundle_neurons;
create trigger bundle_neurons_liveness
  before insert or update on public.bundle_neurons
  for each row execute function public.tg_bundle_neurons_liveness();

-- -----------------------------------------------------------------------------
-- Internal helpers. Not callable through the API (no grants): only the
-- SECURITY DEFINER functions below reach them, as the owner. Plain functions,
-- so they add no privilege of their own.
-- -----------------------------------------------------------------------------

-- Refuses a caller who is not an admin, naming what was refused.
create or replace function public._require_admin(p_action text)
returns void
language plpgsql
stable
set search_path = ''
as $$
begin
  if not public.is_admin() then
    raise exception 'only admins may %', p_action using errcode = 'insufficient_privilege';
  end if;
end
$$;

revoke all on function public._require_admin(text) from public, anon, authenticated, service_role;

-- Soft deletes, restores and hard deletes run one at a time (they are rare and
-- human-paced). Each changes one row and the links between it and the other
-- kind, and its guard reads the other kind: serialised, no two of them can
-- interleave into a live link with a deleted end, and they cannot deadlock.
-- Read committed (the default) gives each statement after the lock a fresh
-- snapshot.
create or replace function public._lock_content_deletions()
returns void
language sql
set search_path = ''
as $$
  select pg_catalog.pg_advisory_xact_lock(23, 0)  -- (migration 23, lock 0)
$$;

revoke all on function public._lock_content_deletions() from public, anon, authenticated, service_role;

-- The row an operation acts on; present is false for an unknown id.
create or replace function public._content_row(
  p_kind text,
  p_id uuid,
  out present boolean,
  out slug text,
  out title text,
  out required_tier integer,
  out deleted_at timestamptz)
language plpgsql
stable
set search_path = ''
as $$
begin
  if p_kind = 'neuron' then
    select n.slug, n.title, n.required_tier, n.deleted_at
    into slug, title, required_tier, deleted_at
    from public.neurons n where n.id = p_id;
  elsif p_kind = 'bundle' then
    select b.slug, b.title, b.required_tier, b.deleted_at
    into slug, title, required_tier, deleted_at
    from public.bundles b where b.id = p_id;
  else
    raise exception 'unknown content kind %', p_kind using errcode = 'invalid_parameter_value';
  end if;
  present := found;
end
$$;

revoke all on function public._content_row(text, uuid) from public, anon, authenticated, service_role;

-- What depends on a neuron or a bundle, whatever its own state. blockers is
-- null when nothing does, else the reasons in words. Guarded are:
--   * a neuron held by a live bundle (by any of its links: restoring the
--     neuron would put it back in that bundle);
--   * content an active subscription reaches: status active or trialing, not
--     ended, not expired, plan_tier at least the content's required_tier;
--   * content somebody bought: a purchase of the neuron, of a bundle holding
--     it, or of the bundle.
create or replace function public._content_dependents(
  p_kind text,
  p_id uuid,
  p_required_tier integer,
  out active_bundles text[],
  out active_subscriptions integer,
  out purchases integer,
  out blockers text)
language plpgsql
stable
set search_path = ''
as $$
declare
  v_why text[] := '{}';
begin
  select count(*)::integer into active_subscriptions
  from public.user_subscriptions s
  where s.status in ('active', 'trialing')
    and s.ended_at is null
    and (s.expires_at is null or s.expires_at > now())
    and s.plan_tier >= p_required_tier;

  if p_kind = 'neuron' then
    active_bundles := array(
      select b.slug
      from public.bundle_neurons bn
      join public.bundles b on b.id = bn.bundle_id
      where bn.neuron_id = p_id and b.deleted_at is null
      order by b.slug);
    purchases := (select count(*) from public.user_purchases p where p.neuron_id = p_id)
               + (select count(*) from public.user_purchases p
                  where p.bundle_id in (select bn.bundle_id from public.bundle_neurons bn where bn.neuron_id = p_id));
  else
    active_bundles := '{}';
    purchases := (select count(*) from public.user_purchases p where p.bundle_id = p_id);
  end if;

  if cardinality(active_bundles) > 0 then
    v_why := v_why || format('is in %s live bundle(s): %s', cardinality(active_bundles), array_to_string(active_bundles, ', '));
  end if;
  if active_subscriptions > 0 then
    v_why := v_why || format('is reachable through %s active subscription(s)', active_subscriptions);
  end if;
  if purchases > 0 then
    v_why := v_why || format('was bought %s time(s)%s', purchases,
                             case when p_kind = 'neuron' then ' (on its own or in a bundle)' else '' end);
  end if;
  blockers := nullif(array_to_string(v_why, '; '), '');
end
$$;

revoke all on function public._content_dependents(text, uuid, integer) from public, anon, authenticated, service_role;

-- Appends one entry to the audit trail, naming the caller.
create or replace function public._log_content_action(
  p_action text, p_kind text, p_id uuid, p_slug text, p_title text, p_reason text, p_cascaded jsonb)
returns void
language sql
set search_path = ''
as $$
  insert into public.content_deletion_log
    (action, content_kind, content_id, slug, title, actor_id, actor_role, reason, cascaded)
  values
    (p_action, p_kind, p_id, p_slug, p_title, auth.uid(),
     coalesce(nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text),
     p_reason, p_cascaded)
$$;

revoke all on function public._log_content_action(text, text, uuid, text, text, text, jsonb)
  from public, anon, authenticated, service_role;

-- Soft delete: hide the row and take its live links down, if the guard allows.
-- Returns false (and says so) when the row is already deleted.
create or replace function public._soft_delete_content(p_kind text, p_id uuid, p_reason text)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  d record;  -- the row
  g record;  -- what depends on it
  v_by uuid;
  v_links jsonb;
begin
  perform public._lock_content_deletions();
  select * into d from public._content_row(p_kind, p_id);
  if not d.present then
    raise exception '% % not found', p_kind, p_id using errcode = 'no_data_found';
  end if;
  if d.deleted_at is not null then
    raise notice '% % is already deleted (since %): nothing changed', p_kind, p_id, d.deleted_at;
    return false;
  end if;
  select * into g from public._content_dependents(p_kind, p_id, d.required_tier);
  if g.blockers is not null then
    raise exception 'cannot delete % %: it %', p_kind, d.slug, g.blockers
      using errcode = 'object_in_use',
            hint = format('public.f_can_delete_%s(%L) lists what depends on it', p_kind, p_id);
  end if;

  -- deleted_by names a user only while that user exists (service keys have none).
  v_by := (select u.id from auth.users u where u.id = auth.uid());
  if p_kind = 'neuron' then
    update public.neurons set deleted_at = now(), deleted_by = v_by, deletion_reason = p_reason where id = p_id;
    with taken as (
      update public.bundle_neurons bn set deleted_at = now()
      where bn.neuron_id = p_id and bn.deleted_at is null
      returning bn.bundle_id, bn.neuron_id)
    select coalesce(jsonb_agg(to_jsonb(taken) order by taken.bundle_id), '[]') into v_links from taken;
  else
    update public.bundles set deleted_at = now(), deleted_by = v_by, deletion_reason = p_reason where id = p_id;
    with taken as (
      update public.bundle_neurons bn set deleted_at = now()
      where bn.bundle_id = p_id and bn.deleted_at is null
      returning bn.bundle_id, bn.neuron_id)
    select coalesce(jsonb_agg(to_jsonb(taken) order by taken.neuron_id), '[]') into v_links from taken;
  end if;

  perform public._log_content_action('soft_delete', p_kind, p_id, d.slug, d.title, p_reason, v_links);
  return true;
end
$$;

revoke all on function public._soft_delete_content(text, uuid, text) from public, anon, authenticated, service_role;

-- Restore: show the row again and bring back its links whose other end is
-- live. Returns false (and says so) when the row is not deleted.
create or replace function public._restore_content(p_kind text, p_id uuid)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  d record;
  v_links jsonb;
begin
  perform public._lock_content_deletions();
  select * into d from public._content_row(p_kind, p_id);
  if not d.present then
    raise exception '% % not found', p_kind, p_id using errcode = 'no_data_found';
  end if;
  if d.deleted_at is null then
    raise notice '% % is not deleted: nothing changed', p_kind, p_id;
    return false;
  end if;

  begin
    if p_kind = 'neuron' then
      update public.neurons set deleted_at = null, deleted_by = null, deletion_reason = null where id = p_id;
      with brought as (
        update public.bundle_neurons bn set deleted_at = null
        from public.bundles b
        where bn.neuron_id = p_id and bn.deleted_at is not null
          and b.id = bn.bundle_id and b.deleted_at is null
        returning bn.bundle_id, bn.neuron_id)
      select coalesce(jsonb_agg(to_jsonb(brought) order by brought.bundle_id), '[]') into v_links from brought;
    else
      update public.bundles set deleted_at = null, deleted_by = null, deletion_reason = null where id = p_id;
      with brought as (
        update public.bundle_neurons bn set deleted_at = null
        from public.neurons n
        where bn.bundle_id = p_id and bn.deleted_at is not null
          and n.id = bn.neuron_id and n.deleted_at is null
        returning bn.bundle_id, bn.neuron_id)
      select coalesce(jsonb_agg(to_jsonb(brought) order by brought.neuron_id), '[]') into v_links from brought;
    end if;
  exception when unique_violation then
    raise exception 'cannot restore % %: its slug % is taken by a live %', p_kind, p_id, d.slug, p_kind
      using errcode = 'unique_violation', hint = 'rename one of the two, then restore again';
  end;

  perform public._log_content_action('restore', p_kind, p_id, d.slug, d.title, null, v_links);
  return true;
end
$$;

revoke all on function public._restore_content(text, uuid) from public, anon, authenticated, service_role;

-- Hard delete: remove a row soft-deleted at least 90 days ago that the guard
-- still allows, with its links. Returns false when the row was hard-deleted
-- already (the trail says so); raises for anything else it refuses.
create or replace function public._hard_delete_content(p_kind text, p_id uuid, p_reason text default null)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  d record;  -- the row
  g record;  -- what depends on it
  v_links jsonb;
begin
  perform public._lock_content_deletions();
  select * into d from public._content_row(p_kind, p_id);
  if not d.present then
    if exists (select 1 from public.content_deletion_log l
               where l.content_id = p_id and l.content_kind = p_kind and l.action = 'hard_delete') then
      raise notice '% % was hard-deleted already: nothing changed', p_kind, p_id;
      return false;
    end if;
    raise exception '% % not found', p_kind, p_id using errcode = 'no_data_found';
  end if;
  if d.deleted_at is null then
    raise exception 'cannot hard-delete % %: it is not soft-deleted', p_kind, d.slug
      using errcode = 'object_not_in_prerequisite_state',
            hint = format('soft delete it with public.f_soft_delete_%s() first; hard delete is possible 90 days later', p_kind);
  end if;
  if d.deleted_at > now() - interval '90 days' then
    raise exception 'cannot hard-delete % %: soft-deleted on %, hard delete is possible from %',
      p_kind, d.slug, d.deleted_at, d.deleted_at + interval '90 days'
      using errcode = 'object_not_in_prerequisite_state';
  end if;
  select * into g from public._content_dependents(p_kind, p_id, d.required_tier);
  if g.blockers is not null then
    raise exception 'cannot hard-delete % %: it %', p_kind, d.slug, g.blockers
      using errcode = 'object_in_use';
  end if;

  -- Its links go with it (the foreign keys cascade); note them for the trail first.
  if p_kind = 'neuron' then
    with removed as (
      delete from public.bundle_neurons bn where bn.neuron_id = p_id returning bn.bundle_id, bn.neuron_id)
    select coalesce(jsonb_agg(to_jsonb(removed) order by removed.bundle_id), '[]') into v_links from removed;
    delete from public.neurons where id = p_id;
  else
    with removed as (
      delete from public.bundle_neurons bn where bn.bundle_id = p_id returning bn.bundle_id, bn.neuron_id)
    select coalesce(jsonb_agg(to_jsonb(removed) order by removed.neuron_id), '[]') into v_links from removed;
    delete from public.bundles where id = p_id;
  end if;

  perform public._log_content_action('hard_delete', p_kind, p_id, d.slug, d.title, p_reason, v_links);
  return true;
end
$$;

revoke all on function public._hard_delete_content(text, uuid, text) from public, anon, authenticated, service_role;

-- -----------------------------------------------------------------------------
-- Guards. SECURITY DEFINER so the answer is the whole truth whoever asks
-- (subscriptions and purchases of every user, past row-level security); the
-- explicit admin check keeps those counts for admins.
-- -----------------------------------------------------------------------------

-- Can this neuron be (soft) deleted now? Unknown and deleted ids get a reason.
-- Definer: counts every user's subscriptions and purchases, not the caller's.
create or replace function public.f_can_delete_neuron(p_neuron_id uuid)
returns table (can_delete boolean, reason text, active_bundles text[], active_subscriptions integer)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  d record;  -- the row
  g record;  -- what depends on it
begin
  perform public._require_admin('check whether a neuron can be deleted');
  select * into d from public._content_row('neuron', p_neuron_id);
  if not d.present then
    return query select false, 'neuron not found', '{}'::text[], 0;
    return;
  end if;
  select * into g from public._content_dependents('neuron', p_neuron_id, d.required_tier);
  return query select
    d.deleted_at is null and g.blockers is null,
    case
      when d.deleted_at is not null then format('neuron is already deleted (since %s)', d.deleted_at)
      when g.blockers is not null then 'neuron ' || g.blockers
      else 'neuron can be deleted: no live bundle, active subscription or purchase depends on it'
    end,
    g.active_bundles,
    g.active_subscriptions;
end
$$;

revoke all on function public.f_can_delete_neuron(uuid) from public, anon;
grant execute on function public.f_can_delete_neuron(uuid) to authenticated, service_role;

-- Can this bundle be (soft) deleted now? Unknown and deleted ids get a reason.
-- Definer: counts every user's subscriptions and purchases, not the caller's.
create or replace function public.f_can_delete_bundle(p_bundle_id uuid)
returns table (can_delete boolean, reason text, active_subscriptions integer)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  d record;  -- the row
  g record;  -- what depends on it
begin
  perform public._require_admin('check whether a bundle can be deleted');
  select * into d from public._content_row('bundle', p_bundle_id);
  if not d.present then
    return query select false, 'bundle not found', 0;
    return;
  end if;
  select * into g from public._content_dependents('bundle', p_bundle_id, d.required_tier);
  return query select
    d.deleted_at is null and g.blockers is null,
    case
      when d.deleted_at is not null then format('bundle is already deleted (since %s)', d.deleted_at)
      when g.blockers is not null then 'bundle ' || g.blockers
      else 'bundle can be deleted: no active subscription or purchase depends on it'
    end,
    g.active_subscriptions;
end
$$;

revoke all on function public.f_can_delete_bundle(uuid) from public, anon;
grant execute on function public.f_can_delete_bundle(uuid) to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- Soft delete, restore, hard delete. SECURITY DEFINER because only the table
-- owner may change the deletion columns and write the trail (see the
-- triggers above); each one checks is_admin() first. Errors a caller can act
-- on: insufficient_privilege (not an admin), no_data_found (unknown id),
-- object_in_use (the guard refuses), object_not_in_prerequisite_state (hard
-- delete too early or before a soft delete), unique_violation (restore onto a
-- slug taken meanwhile).
-- -----------------------------------------------------------------------------

-- Soft-deletes a neuron; true when it did, false when it was deleted already.
-- Definer: writes the deletion columns and the trail, which only the owner may.
create or replace function public.f_soft_delete_neuron(p_neuron_id uuid, p_reason text default null)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform public._require_admin('soft delete a neuron');
  return public._soft_delete_content('neuron', p_neuron_id, p_reason);
end
$$;

revoke all on function public.f_soft_delete_neuron(uuid, text) from public, anon;
grant execute on function public.f_soft_delete_neuron(uuid, text) to authenticated, service_role;

-- Soft-deletes a bundle and takes its links down; true when it did.
-- Definer: writes the deletion columns and the trail, which only the owner may.
create or replace function public.f_soft_delete_bundle(p_bundle_id uuid, p_reason text default null)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform public._require_admin('soft delete a bundle');
  return public._soft_delete_content('bundle', p_bundle_id, p_reason);
end
$$;

revoke all on function public.f_soft_delete_bundle(uuid, text) from public, anon;
grant execute on function public.f_soft_delete_bundle(uuid, text) to authenticated, service_role;

-- Restores a neuron and its links to live bundles; true when it did.
-- Definer: writes the deletion columns and the trail, which only the owner may.
create or replace function public.f_restore_neuron(p_neuron_id uuid)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform public._require_admin('restore a neuron');
  return public._restore_content('neuron', p_neuron_id);
end
$$;

revoke all on function public.f_restore_neuron(uuid) from public, anon;
grant execute on function public.f_restore_neuron(uuid) to authenticated, service_role;

-- Restores a bundle and its links to live neurons; true when it did.
-- Definer: writes the deletion columns and the trail, which only the owner may.
create or replace function public.f_restore_bundle(p_bundle_id uuid)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform public._require_admin('restore a bundle');
  return public._restore_content('bundle', p_bundle_id);
end
$$;

revoke all on function public.f_restore_bundle(uuid) from public, anon;
grant execute on function public.f_restore_bundle(uuid) to authenticated, service_role;

-- Removes a neuron for good, 90 days after its soft delete; true when it did.
-- Definer: deletes content rows and writes the trail, which only the owner may.
create or replace function public.f_hard_delete_neuron(p_neuron_id uuid)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform public._require_admin('hard delete a neuron');
  return public._hard_delete_content('neuron', p_neuron_id);
end
$$;

revoke all on function public.f_hard_delete_neuron(uuid) from public, anon;
grant execute on function public.f_hard_delete_neuron(uuid) to authenticated, service_role;

-- Removes a bundle for good, 90 days after its soft delete; true when it did.
-- Definer: deletes content rows and writes the trail, which only the owner may.
create or replace function public.f_hard_delete_bundle(p_bundle_id uuid)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform public._require_admin('hard delete a bundle');
  return public._hard_delete_content('bundle', p_bundle_id);
end
$$;

revoke all on function public.f_hard_delete_bundle(uuid) from public, anon;
grant execute on function public.f_hard_delete_bundle(uuid) to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- The 90-day cleanup, for a scheduler: no JWT needed (a superuser session or
-- service_role is an admin). Hard-deletes what was soft-deleted at least 90
-- days ago, bundles first (removing them can free neurons only they held);
-- what the guard still protects is kept and named in a notice.
-- cleanup_date is the cut-off: rows soft-deleted before it were eligible.
-- SECURITY DEFINER for the same reason as the hard delete it repeats.
-- -----------------------------------------------------------------------------
create or replace function public.f_cleanup_old_deleted_data()
returns table (table_name text, deleted_count integer, cleanup_date timestamptz)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_cutoff timestamptz := now() - interval '90 days';
  v_reason text := 'cleanup: soft-deleted more than 90 days ago';
  v_bundles integer := 0;
  v_neurons integer := 0;
  v_links integer := 0;
  v_its_links integer;
  r record;
begin
  perform public._require_admin('clean up deleted content');
  perform public._lock_content_deletions();

  for r in select b.id from public.bundles b where b.deleted_at <= v_cutoff order by b.deleted_at loop
    begin
      v_its_links := (select count(*) from public.bundle_neurons bn where bn.bundle_id = r.id);
      perform public._hard_delete_content('bundle', r.id, v_reason);
      v_bundles := v_bundles + 1;
      v_links := v_links + v_its_links;
    exception when object_in_use or foreign_key_violation then
      raise notice 'kept bundle %: %', r.id, sqlerrm;
    end;
  end loop;

  for r in select n.id from public.neurons n where n.deleted_at <= v_cutoff order by n.deleted_at loop
    begin
      v_its_links := (select count(*) from public.bundle_neurons bn where bn.neuron_id = r.id);
      perform public._hard_delete_content('neuron', r.id, v_reason);
      v_neurons := v_neurons + 1;
      v_links := v_links + v_its_links;
    exception when object_in_use or foreign_key_violation then
      raise notice 'kept neuron %: %', r.id, sqlerrm;
    end;
  end loop;

  return query
    select 'bundles', v_bundles, v_cutoff
    union all
    select 'neurons', v_neurons, v_cutoff
    union all
    select 'bundle_neurons', v_links, v_cutoff;
end
$$;

revoke all on function public.f_cleanup_old_deleted_data() from public, anon;
grant execute on function public.f_cleanup_old_deleted_data() to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- Deleted content, for admins: who deleted it (a user id, never an e-mail),
-- when, why, and from when it can be hard-deleted. security_invoker: the
-- caller's row-level security applies, and the is_admin() filter says so
-- outright. Recreated, not replaced: the first version's columns differ.
-- -----------------------------------------------------------------------------
drop view if exists public.v_neurons_deleted;
create view public.v_neurons_deleted with (security_invoker = true) as
select
  n.id,
  n.slug,
  n.title,
  n.required_tier,
  n.deleted_at,
  n.deleted_by,
  n.deletion_reason,
  n.deleted_at + interval '90 days' as hard_delete_from
from public.neurons n
where n.deleted_at is not null
  and (select public.is_admin());

revoke all on public.v_neurons_deleted from public, anon;
grant select on public.v_neurons_deleted to authenticated, service_role;

drop view if exists public.v_bundles_deleted;
create view public.v_bundles_deleted with (security_invoker = true) as
select
  b.id,
  b.slug,
  b.title,
  b.required_tier,
  b.deleted_at,
  b.deleted_by,
  b.deletion_reason,
  b.deleted_at + interval '90 days' as hard_delete_from,
  (select count(*) from public.bundle_neurons bn where bn.bundle_id = b.id)::integer as neuron_links
from public.bundles b
where b.deleted_at is not null
  and (select public.is_admin());

revoke all on public.v_bundles_deleted from public, anon;
grant select on public.v_bundles_deleted to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- Row-level security: anonymous and ordinary users read live rows only;
-- admins read everything. Restrictive policies narrow 10_content.sql's
-- "everyone reads" (re-running that file cannot widen them again). Writes
-- stay admin-only (10_content.sql) and the triggers above keep the deletion
-- columns to the functions.
-- -----------------------------------------------------------------------------

-- The first version's permissive read policies.
drop policy if exists neurons_select_public on public.neurons;
drop policy if exists bundles_select_public on public.bundles;

drop policy if exists neurons_live_only on public.neurons;
create policy neurons_live_only on public.neurons as restrictive for select
  using (deleted_at is null or (select public.is_admin()));

drop policy if exists bundles_live_only on public.bundles;
create policy bundles_live_only on public.bundles as restrictive for select
  using (deleted_at is null or (select public.is_admin()));

drop policy if exists bundle_neurons_live_only on public.bundle_neurons;
create policy bundle_neurons_live_only on public.bundle_neurons as restrictive for select
  using (deleted_at is null or (select public.is_admin()));

-- -----------------------------------------------------------------------------
-- Content deleted before the audit trail existed (first version) gets its
-- soft delete recorded from the row, so every deleted row's history starts
-- with its delete. A no-op once it has.
-- -----------------------------------------------------------------------------
insert into public.content_deletion_log
  (occurred_at, action, content_kind, content_id, slug, title, actor_id, actor_role, reason)
select x.deleted_at, 'soft_delete', x.kind, x.id, x.slug, x.title, x.deleted_by, 'unrecorded', x.deletion_reason
from (
  select 'neuron' as kind, n.id, n.slug, n.title, n.deleted_at, n.deleted_by, n.deletion_reason
  from public.neurons n where n.deleted_at is not null
  union all
  select 'bundle', b.id, b.slug, b.title, b.deleted_at, b.deleted_by, b.deletion_reason
  from public.bundles b where b.deleted_at is not null
) x
where not exists (
  select 1 from public.content_deletion_log l
  where l.content_id = x.id and l.content_kind = x.kind and l.action = 'soft_delete');

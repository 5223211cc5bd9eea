-- =============================================================================
-- Retention, second version: the same rules, on stripe_events' deployed names
-- (id, type; 45_stripe_events_v2.sql), and on the deployed shop's content,
-- whose required_tier is the plan_tier enum (cast to its rank explicitly,
-- 07_adopt_deployed_schema.sql). The other cleanups of 30_retention.sql are
-- unchanged.
-- It also takes the failures whose event row is gone (the deployed shop's
-- operators deleted rows to have Stripe redeliver them; the upgrade kept those
-- failures, dead): they go once dead for the failure retention.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- cleanup_stripe_events: one batch of finished events past retention
--   * ok/skipped events whose processing finished p_event_days ago, with their
--     (resolved) failure rows;
--   * dead events received p_event_days ago and dead for p_failure_days, with
--     their failure rows: both retentions must allow;
--   * failures whose event row is gone, dead for p_failure_days.
-- Pending events, and error events with a retry scheduled, are never touched.
-- Rows are locked (skip locked) before they go, so a requeue racing this batch
-- either wins (the event is no longer dead and stays) or finds it gone.
-- -----------------------------------------------------------------------------
create or replace function public.cleanup_stripe_events(
  p_event_days integer default 90,
  p_failure_days integer default 30,
  p_batch_size integer default 1000,
  p_dry_run boolean default false,
  p_run_id bigint default null)
returns table (table_name text, deleted_count bigint)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_event_cutoff timestamptz := now() - make_interval(days => p_event_days);
  v_failure_cutoff timestamptz := now() - make_interval(days => p_failure_days);
  v_ids text[];
  v_events bigint;
  v_failures bigint;
  v_orphans bigint := 0;
begin
  perform public._cleanup_require_admin('cleanup_stripe_events()');
  if p_dry_run then
    return query
      with gone as (
        select e.id from public.stripe_events e
         where e.status in ('ok', 'skipped') and coalesce(e.processed_at, e.received_at) < v_event_cutoff
        union all
        select e.id from public.stripe_events e
          join public.webhook_failures f on f.event_id = e.id
         where e.status = 'error' and f.next_retry is null and f.dead_at < v_failure_cutoff
           and e.received_at < v_event_cutoff
      )
      select 'stripe_events'::text, count(*) from gone
      union all
      select 'webhook_failures'::text, count(*) from public.webhook_failures f
       where f.event_id in (select id from gone)
          or (f.dead_at < v_failure_cutoff and not exists (select 1 from public.stripe_events e where e.id = f.event_id));
    return;
  end if;

  v_ids := array(
    select e.id from public.stripe_events e
     where e.status in ('ok', 'skipped') and coalesce(e.processed_at, e.received_at) < v_event_cutoff
     order by coalesce(e.processed_at, e.received_at)
     limit p_batch_size
     for update skip locked);
  if cardinality(v_ids) < p_batch_size then
    v_ids := v_ids || array(
      select e.id from public.stripe_events e
        join public.webhook_failures f on f.event_id = e.id
       where e.status = 'error' and f.next_retry is null and f.dead_at < v_failure_cutoff
         and e.received_at < v_event_cutoff
       limit p_batch_size - cardinality(v_ids)
       for update of e, f skip locked);
  end if;

  delete from public.webhook_failures f where f.event_id = any (v_ids);
  get diagnostics v_failures = row_count;
  if cardinality(v_ids) < p_batch_size then
    delete from public.webhook_failures f
     where f.id = any (array(
             select f2.id from public.webhook_failures f2
              where f2.dead_at < v_failure_cutoff
                and not exists (select 1 from public.stripe_events e where e.id = f2.event_id)
              limit p_batch_size - cardinality(v_ids)
              for update skip locked));
    get diagnostics v_orphans = row_count;
  end if;
  v_failures := v_failures + v_orphans;
  delete from public.stripe_events e where e.id = any (v_ids);
  get diagnostics v_events = row_count;

  perform public._cleanup_count(p_run_id, jsonb_build_object('stripe_events', v_events, 'webhook_failures', v_failures));
  return query values ('stripe_events'::text, v_events), ('webhook_failures'::text, v_failures);
end;
$$;

comment on function public.cleanup_stripe_events(integer, integer, integer, boolean, bigint) is
  'Admin: deletes one batch of finished Stripe events past retention (never unfinished ones); p_dry_run counts all.';
revoke all on function public.cleanup_stripe_events(integer, integer, integer, boolean, bigint)
  from public, anon, authenticated, service_role;
grant execute on function public.cleanup_stripe_events(integer, integer, integer, boolean, bigint) to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- cleanup_deleted_content: hard-delete content soft-deleted 90 days ago
-- As in 30_retention.sql; the dry run reads required_tier as an integer.
-- -----------------------------------------------------------------------------
create or replace function public.cleanup_deleted_content(
  p_dry_run boolean default false,
  p_run_id bigint default null)
returns table (table_name text, deleted_count bigint)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_cutoff timestamptz := now() - interval '90 days';
  v_counts jsonb;
begin
  perform public._cleanup_require_admin('cleanup_deleted_content()');
  if p_dry_run then
    return query
      with gone as (
        select 'bundle' as kind, b.id from public.bundles b
         where b.deleted_at <= v_cutoff
           and (public._content_dependents('bundle', b.id, b.required_tier::integer)).blockers is null
        union all
        select 'neuron', n.id from public.neurons n
         where n.deleted_at <= v_cutoff
           and (public._content_dependents('neuron', n.id, n.required_tier::integer)).blockers is null
      )
      select 'bundles'::text, count(*) filter (where kind = 'bundle') from gone
      union all
      select 'neurons'::text, count(*) filter (where kind = 'neuron') from gone
      union all
      select 'bundle_neurons'::text, count(*) from public.bundle_neurons bn
       where bn.bundle_id in (select id from gone where kind = 'bundle')
          or bn.neuron_id in (select id from gone where kind = 'neuron');
    return;
  end if;

  select jsonb_object_agg(c.table_name, c.deleted_count) into v_counts from public.f_cleanup_old_deleted_data() c;
  perform public._cleanup_count(p_run_id, v_counts);
  return query select k, (v_counts ->> k)::bigint from jsonb_object_keys(v_counts) k;
end;
$$;

comment on function public.cleanup_deleted_content(boolean, bigint) is
  'Admin: f_cleanup_old_deleted_data() recorded in a run; p_dry_run counts what it would hard-delete now.';
revoke all on function public.cleanup_deleted_content(boolean, bigint) from public, anon, authenticated, service_role;
grant execute on function public.cleanup_deleted_content(boolean, bigint) to authenticated, service_role;

-- =============================================================================
-- Retention, second version: floors, dead letters kept, leases instead of locks
--
--   * The cleanups read stripe_events by its deployed names (id, type;
--     45_stripe_events_v2.sql), and the deployed shop's content, whose
--     required_tier is the plan_tier enum (cast to its rank explicitly,
--     07_adopt_deployed_schema.sql).
--   * Retention arguments below a floor are refused (SQLSTATE 22023): Stripe
--     events are kept at least 7 days (Stripe redelivers for 3, and a
--     redelivery of an event already purged would be taken as new), failure
--     history, rate-limit log and idle buckets at least 1 day; a batch is at
--     least 1 row. An admin cannot purge today's data by passing -1.
--   * A dead event that nobody resolved is never purged, whatever the
--     arguments: an unresolved payment problem must not vanish. It goes once an
--     operator resolves it (a requeue that succeeds), with the retention of any
--     applied event. p_failure_days of cleanup_stripe_events is still taken
--     (its callers pass it) and checked, but no longer purges anything.
--   * One run of a job at a time is a lease in cleanup_runs (lease_until), not
--     a session advisory lock: a lock taken through the API stays on a pooled
--     connection after the call, blocking the worker's cleanups; a lease ends
--     by itself. Each batch extends its run's lease and refuses to run for a
--     run that is no longer running (another took over after its lease ran out).
-- =============================================================================

alter table public.cleanup_runs
  add column if not exists lease_until timestamptz,
  add column if not exists lease_seconds integer;

comment on column public.cleanup_runs.lease_until is
  'A running run holds its job until then; each batch extends it by lease_seconds. Past it, the next run closes it as abandoned.';

-- -----------------------------------------------------------------------------
-- Internal helpers (no grants: only the functions below reach them)
-- -----------------------------------------------------------------------------

-- Refuses a retention argument below its floor.
create or replace function public._cleanup_floor(p_name text, p_value integer, p_floor integer)
returns void
language plpgsql
immutable
set search_path = ''
as $$
begin
  if p_value is null or p_value < p_floor then
    raise exception '% must be at least % (got %)', p_name, p_floor, coalesce(p_value::text, 'null')
      using errcode = 'invalid_parameter_value';
  end if;
end;
$$;

revoke all on function public._cleanup_floor(text, integer, integer) from public, anon, authenticated, service_role;

-- Adds one batch's counts to a run and extends its lease; refuses a run that
-- is not running any more (no run: nothing to record).
create or replace function public._cleanup_count(p_run_id bigint, p_counts jsonb)
returns void
language plpgsql
set search_path = ''
as $$
begin
  if p_run_id is null then
    return;
  end if;
  update public.cleanup_runs r
     set counts = (select coalesce(jsonb_object_agg(k, coalesce((r.counts ->> k)::bigint, 0) + coalesce((p_counts ->> k)::bigint, 0)), '{}')
                   from (select jsonb_object_keys(r.counts) union select jsonb_object_keys(p_counts)) keys (k)),
         batches = r.batches + 1,
         lease_until = now() + make_interval(secs => coalesce(r.lease_seconds, 60))
   where r.id = p_run_id and r.status = 'running';
  if not found then
    raise exception 'cleanup run % is not running any more (its lease ran out and another run took over, or it was closed)', p_run_id
      using errcode = 'object_not_in_prerequisite_state';
  end if;
end;
$$;

revoke all on function public._cleanup_count(bigint, jsonb) from public, anon, authenticated, service_role;

-- -----------------------------------------------------------------------------
-- cleanup_begin: record the start of a run, holding the job for p_lease_seconds
-- Returns the run id, or null with the reason when this run must not happen:
-- another run of the job holds its lease, or this slot has run already. A run
-- still marked running whose lease ran out was killed: it is closed as
-- abandoned (its counts stay, they are exact). Begins of one job serialise on
-- a transaction lock, which ends with this call.
-- -----------------------------------------------------------------------------
drop function if exists public.cleanup_begin(text, timestamptz, text);

create or replace function public.cleanup_begin(
  p_job text,
  p_slot timestamptz default null,
  p_run_by text default null,
  p_lease_seconds integer default 60,
  out run_id bigint,
  out refused text)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_holder public.cleanup_runs;
begin
  perform public._cleanup_require_admin('cleanup_begin()');
  perform public._cleanup_floor('p_lease_seconds', p_lease_seconds, 1);
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('aipt.cleanup'), pg_catalog.hashtext(p_job));

  select * into v_holder from public.cleanup_runs r
   where r.job = p_job and r.status = 'running' and r.lease_until > now()
   order by r.id desc limit 1;
  if v_holder.id is not null then
    refused := format('another run of %s is in progress (run %s, by %s, held until %s)',
                      p_job, v_holder.id, coalesce(v_holder.run_by, '?'), v_holder.lease_until);
    return;
  end if;

  update public.cleanup_runs r
     set status = 'abandoned', finished_at = now(), lease_until = null,
         error = coalesce(r.error, 'stopped without finishing (worker killed or connection lost)')
   where r.job = p_job and r.status = 'running';

  insert into public.cleanup_runs (job, slot, run_by, lease_seconds, lease_until)
  values (p_job, p_slot, p_run_by, p_lease_seconds, now() + make_interval(secs => p_lease_seconds))
  on conflict (job, slot) where slot is not null do nothing
  returning id into run_id;

  if run_id is null then
    refused := p_job || ' ran already for ' || p_slot::text;
  end if;
end;
$$;

comment on function public.cleanup_begin(text, timestamptz, text, integer) is
  'Admin: records a cleanup run holding its job for p_lease_seconds; null run_id and the reason when refused.';
revoke all on function public.cleanup_begin(text, timestamptz, text, integer) from public, anon, authenticated, service_role;
grant execute on function public.cleanup_begin(text, timestamptz, text, integer) to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- cleanup_finish: close a run (ok, or error with its message) and free its job
-- Returns the run as recorded.
-- -----------------------------------------------------------------------------
create or replace function public.cleanup_finish(p_run_id bigint, p_error text default null)
returns setof public.cleanup_runs
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform public._cleanup_require_admin('cleanup_finish()');
  update public.cleanup_runs r
     set finished_at = now(),
         status = case when p_error is null then 'ok' else 'error' end,
         error = p_error,
         lease_until = null
   where r.id = p_run_id and r.status = 'running';
  return query select * from public.cleanup_runs r where r.id = p_run_id;
end;
$$;

comment on function public.cleanup_finish(bigint, text) is
  'Admin: closes a cleanup run as ok (p_error null) or error, and frees its job.';
revoke all on function public.cleanup_finish(bigint, text) from public, anon, authenticated, service_role;
grant execute on function public.cleanup_finish(bigint, text) to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- cleanup_stripe_events: one batch of applied events past retention
-- ok/skipped events whose processing finished p_event_days ago, with their
-- (resolved) failure rows. Pending events, failing ones and dead ones are
-- never touched.
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
  v_event_cutoff timestamptz;
  v_ids text[];
  v_events bigint;
  v_failures bigint;
begin
  perform public._cleanup_require_admin('cleanup_stripe_events()');
  perform public._cleanup_floor('p_event_days', p_event_days, 7);
  perform public._cleanup_floor('p_failure_days', p_failure_days, 1);
  perform public._cleanup_floor('p_batch_size', p_batch_size, 1);
  v_event_cutoff := now() - make_interval(days => p_event_days);
  if p_dry_run then
    return query
      with gone as (
        select e.id from public.stripe_events e
         where e.status in ('ok', 'skipped') and coalesce(e.processed_at, e.received_at) < v_event_cutoff
      )
      select 'stripe_events'::text, count(*) from gone
      union all
      select 'webhook_failures'::text, count(*) from public.webhook_failures f where f.event_id in (select id from gone);
    return;
  end if;

  v_ids := array(
    select e.id from public.stripe_events e
     where e.status in ('ok', 'skipped') and coalesce(e.processed_at, e.received_at) < v_event_cutoff
     order by coalesce(e.processed_at, e.received_at)
     limit p_batch_size
     for update skip locked);

  delete from public.webhook_failures f where f.event_id = any (v_ids);
  get diagnostics v_failures = row_count;
  delete from public.stripe_events e where e.id = any (v_ids);
  get diagnostics v_events = row_count;

  perform public._cleanup_count(p_run_id, jsonb_build_object('stripe_events', v_events, 'webhook_failures', v_failures));
  return query values ('stripe_events'::text, v_events), ('webhook_failures'::text, v_failures);
end;
$$;

comment on function public.cleanup_stripe_events(integer, integer, integer, boolean, bigint) is
  'Admin: deletes one batch of applied Stripe events past retention (never pending, failing or dead ones); p_dry_run counts all.';
revoke all on function public.cleanup_stripe_events(integer, integer, integer, boolean, bigint)
  from public, anon, authenticated, service_role;
grant execute on function public.cleanup_stripe_events(integer, integer, integer, boolean, bigint) to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- cleanup_webhook_failures: one batch of failure history past retention
-- Only failures resolved p_failure_days ago (the event succeeded later; the
-- event itself stays for its own retention). Dead and retrying ones never.
-- -----------------------------------------------------------------------------
create or replace function public.cleanup_webhook_failures(
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
  v_cutoff timestamptz;
  v_count bigint;
begin
  perform public._cleanup_require_admin('cleanup_webhook_failures()');
  perform public._cleanup_floor('p_failure_days', p_failure_days, 1);
  perform public._cleanup_floor('p_batch_size', p_batch_size, 1);
  v_cutoff := now() - make_interval(days => p_failure_days);
  if p_dry_run then
    return query select 'webhook_failures'::text, count(*) from public.webhook_failures f
                  where f.resolved_at < v_cutoff and f.next_retry is null;
    return;
  end if;

  delete from public.webhook_failures f
   where f.id = any (array(
           select f2.id from public.webhook_failures f2
            where f2.resolved_at < v_cutoff and f2.next_retry is null
            order by f2.resolved_at
            limit p_batch_size
            for update skip locked))
     and f.resolved_at < v_cutoff and f.next_retry is null;
  get diagnostics v_count = row_count;

  perform public._cleanup_count(p_run_id, jsonb_build_object('webhook_failures', v_count));
  return query values ('webhook_failures'::text, v_count);
end;
$$;

comment on function public.cleanup_webhook_failures(integer, integer, boolean, bigint) is
  'Admin: deletes one batch of failure history of events that succeeded later, past retention; p_dry_run counts all.';
revoke all on function public.cleanup_webhook_failures(integer, integer, boolean, bigint) from public, anon, authenticated, service_role;
grant execute on function public.cleanup_webhook_failures(integer, integer, boolean, bigint) to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- cleanup_rate_limit: one batch of old rate_limit_log rows and idle buckets
-- -----------------------------------------------------------------------------
create or replace function public.cleanup_rate_limit(
  p_log_days integer default 7,
  p_bucket_days integer default 30,
  p_batch_size integer default 1000,
  p_dry_run boolean default false,
  p_run_id bigint default null)
returns table (table_name text, deleted_count bigint)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_log_cutoff timestamptz;
  v_bucket_cutoff timestamptz;
  v_log bigint;
  v_buckets bigint;
begin
  perform public._cleanup_require_admin('cleanup_rate_limit()');
  perform public._cleanup_floor('p_log_days', p_log_days, 1);
  perform public._cleanup_floor('p_bucket_days', p_bucket_days, 1);
  perform public._cleanup_floor('p_batch_size', p_batch_size, 1);
  v_log_cutoff := now() - make_interval(days => p_log_days);
  v_bucket_cutoff := now() - make_interval(days => p_bucket_days);
  if p_dry_run then
    return query
      select 'rate_limit_log'::text, count(*) from public.rate_limit_log l where l.request_timestamp < v_log_cutoff
      union all
      select 'rate_limit_buckets'::text, count(*) from public.rate_limit_buckets b where b.last_request < v_bucket_cutoff;
    return;
  end if;

  -- The log is append-only and has no key: rows are picked by ctid.
  delete from public.rate_limit_log l
   where l.ctid = any (array(
           select l2.ctid from public.rate_limit_log l2 where l2.request_timestamp < v_log_cutoff limit p_batch_size))
     and l.request_timestamp < v_log_cutoff;
  get diagnostics v_log = row_count;

  delete from public.rate_limit_buckets b
   where (b.endpoint_key, b.bucket_key) in (
           select b2.endpoint_key, b2.bucket_key from public.rate_limit_buckets b2
            where b2.last_request < v_bucket_cutoff
            limit p_batch_size
            for update skip locked)
     and b.last_request < v_bucket_cutoff;
  get diagnostics v_buckets = row_count;

  perform public._cleanup_count(p_run_id, jsonb_build_object('rate_limit_log', v_log, 'rate_limit_buckets', v_buckets));
  return query values ('rate_limit_log'::text, v_log), ('rate_limit_buckets'::text, v_buckets);
end;
$$;

comment on function public.cleanup_rate_limit(integer, integer, integer, boolean, bigint) is
  'Admin: deletes one batch of old rate_limit_log rows and idle rate_limit_buckets; p_dry_run counts all.';
revoke all on function public.cleanup_rate_limit(integer, integer, integer, boolean, bigint) from public, anon, authenticated, service_role;
grant execute on function public.cleanup_rate_limit(integer, integer, integer, boolean, bigint) to authenticated, service_role;

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

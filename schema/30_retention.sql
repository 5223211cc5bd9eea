-- =============================================================================
-- Retention: scheduled cleanups that delete in small batches, and their runs
--
--   job               what goes                                        default
--   stripe_events     ok/skipped events finished N days ago (their        90 days
--                     failure rows go with them); dead events once
--                     received 90 and dead 30 days ago
--   webhook_failures  failure history of events that later succeeded,     30 days
--                     N days after they did
--   rate_limit        rate_limit_log rows; idle rate_limit_buckets        7 / 30 days
--   deleted_content   soft-deleted neurons and bundles, through          90 days
--                     f_cleanup_old_deleted_data() (23_neuron_delete_guard.sql)
--
-- An unfinished event is never deleted: pending, error with a retry still
-- scheduled, or dead for less than the failure retention. An unresolved
-- payment problem must not vanish.
--
-- Each cleanup_* function deletes at most p_batch_size rows of each table per
-- call, in one short transaction, and returns what it deleted; the worker calls
-- it again until nothing is left, so no statement holds locks for long and
-- ingest keeps its latency. With p_dry_run it counts everything that would go
-- and deletes nothing. The retention days are arguments: the worker passes its
-- settings ([cleanup] in settings.toml); the defaults here are the same.
--
-- A run (cleanup_begin .. cleanup_finish) is recorded in cleanup_runs with its
-- per-table counts, which each batch adds to in its own transaction, so the
-- counts are exact even for a run that was killed. Runs of one job exclude each
-- other through a session advisory lock held by the connection doing the run,
-- and a scheduled run is recorded once per slot (the time it was scheduled
-- for), so workers racing for the same cron run it once.
--
-- SECURITY DEFINER throughout so an admin JWT or service_role can run them
-- from the API or psql past row-level security; each checks is_admin().
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Runs
-- -----------------------------------------------------------------------------
create table if not exists public.cleanup_runs (
  id bigint generated always as identity primary key,
  job text not null,
  slot timestamptz,                       -- the cron time this run is for; null: run by hand
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  status text not null default 'running',
  counts jsonb not null default '{}'::jsonb,  -- {"<table>": rows deleted}
  batches integer not null default 0,
  error text,
  run_by text,                            -- host:pid of the worker, or the CLI
  constraint cleanup_runs_status_check check (status in ('running', 'ok', 'error', 'abandoned'))
);

comment on table public.cleanup_runs is
  'One row per cleanup run: job, when, per-table deleted counts, outcome. Admins read; cleanup_* functions write.';

-- One run per scheduled slot: the second worker to reach a slot finds it taken.
create unique index if not exists cleanup_runs_slot_key on public.cleanup_runs (job, slot) where slot is not null;
-- The last run of each job (aipt status).
create index if not exists cleanup_runs_job_started_idx on public.cleanup_runs (job, started_at desc);

alter table public.cleanup_runs enable row level security;
drop policy if exists cleanup_runs_admin_read on public.cleanup_runs;
create policy cleanup_runs_admin_read on public.cleanup_runs for select using ((select public.is_admin()));
revoke all on public.cleanup_runs from public, anon, authenticated;
grant select on public.cleanup_runs to authenticated;
grant all on public.cleanup_runs to service_role;

-- -----------------------------------------------------------------------------
-- Indexes the batches (and aipt status) read
-- -----------------------------------------------------------------------------
-- Finished events by the time they finished. Partial: ingest inserts pending
-- rows, which this index never holds, so the hot path does not pay for it.
create index if not exists stripe_events_finished_idx
  on public.stripe_events ((coalesce(processed_at, received_at)))
  where status in ('ok', 'skipped');
-- Events by arrival: dead events past retention here, and `aipt status`
-- (events of the last hour and day). Ingest appends at its right-hand edge.
create index if not exists stripe_events_received_idx on public.stripe_events (received_at);
-- Failure history of events that succeeded later.
create index if not exists webhook_failures_resolved_idx
  on public.webhook_failures (resolved_at) where resolved_at is not null;
-- No index on rate_limit_buckets.last_request: every rate-limit check updates
-- it, and an index on it would end the HOT updates 26_rate_limit.sql relies
-- on. The table holds one row per caller and endpoint; a scan is cheap.

-- -----------------------------------------------------------------------------
-- Internal helpers (no grants: only the functions below reach them)
-- -----------------------------------------------------------------------------

-- Refuses a caller who is not an admin.
create or replace function public._cleanup_require_admin(p_what text)
returns void
language plpgsql
stable
set search_path = ''
as $$
begin
  if not public.is_admin() then
    raise exception '% is for admins, service_role and superusers', p_what using errcode = 'insufficient_privilege';
  end if;
end;
$$;

revoke all on function public._cleanup_require_admin(text) from public, anon, authenticated, service_role;

-- Adds one batch's counts to a run (no run: nothing to record).
create or replace function public._cleanup_count(p_run_id bigint, p_counts jsonb)
returns void
language sql
set search_path = ''
as $$
  update public.cleanup_runs r
     set counts = (select coalesce(jsonb_object_agg(k, coalesce((r.counts ->> k)::bigint, 0) + coalesce((p_counts ->> k)::bigint, 0)), '{}')
                   from (select jsonb_object_keys(r.counts) union select jsonb_object_keys(p_counts)) keys (k)),
         batches = r.batches + 1
   where r.id = p_run_id
$$;

revoke all on function public._cleanup_count(bigint, jsonb) from public, anon, authenticated, service_role;

-- -----------------------------------------------------------------------------
-- cleanup_begin: take a job's lock and record the start of a run
-- The lock is a session advisory lock: it lives as long as the caller's
-- connection (or until cleanup_finish), whatever happens to transactions, so
-- the caller runs every batch on that connection and closes it at the end.
-- Returns the run id, or null with the reason when this run must not happen:
-- another run of the job holds the lock, or this slot has run already. A run
-- still marked running while we hold the lock was killed: it is closed as
-- abandoned (its counts stay, they are exact).
-- -----------------------------------------------------------------------------
create or replace function public.cleanup_begin(
  p_job text,
  p_slot timestamptz default null,
  p_run_by text default null,
  out run_id bigint,
  out refused text)
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform public._cleanup_require_admin('cleanup_begin()');
  if not pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext('aipt.cleanup'), pg_catalog.hashtext(p_job)) then
    refused := 'another run of ' || p_job || ' is in progress';
    return;
  end if;

  update public.cleanup_runs r
     set status = 'abandoned', finished_at = now(),
         error = coalesce(r.error, 'stopped without finishing (worker killed or connection lost)')
   where r.job = p_job and r.status = 'running';

  insert into public.cleanup_runs (job, slot, run_by)
  values (p_job, p_slot, p_run_by)
  on conflict (job, slot) where slot is not null do nothing
  returning id into run_id;

  if run_id is null then
    perform pg_catalog.pg_advisory_unlock(pg_catalog.hashtext('aipt.cleanup'), pg_catalog.hashtext(p_job));
    refused := p_job || ' ran already for ' || p_slot::text;
  end if;
end;
$$;

comment on function public.cleanup_begin(text, timestamptz, text) is
  'Admin: locks a cleanup job (session advisory lock) and records a run; null run_id and the reason when refused.';
revoke all on function public.cleanup_begin(text, timestamptz, text) from public, anon;
grant execute on function public.cleanup_begin(text, timestamptz, text) to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- cleanup_finish: close a run (ok, or error with its message) and unlock
-- Returns the run as recorded. Called on the connection that began it; from
-- another one it still closes the run (the lock then goes with its connection).
-- -----------------------------------------------------------------------------
create or replace function public.cleanup_finish(p_run_id bigint, p_error text default null)
returns setof public.cleanup_runs
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_run public.cleanup_runs;
begin
  perform public._cleanup_require_admin('cleanup_finish()');
  update public.cleanup_runs r
     set finished_at = now(),
         status = case when p_error is null then 'ok' else 'error' end,
         error = p_error
   where r.id = p_run_id and r.status = 'running'
  returning r.* into v_run;
  if v_run.id is null then
    select * into v_run from public.cleanup_runs r where r.id = p_run_id;
    return next v_run;
    return;
  end if;
  -- Unlock only a lock this session holds (pg_advisory_unlock would warn otherwise).
  if exists (select 1 from pg_catalog.pg_locks l
              where l.locktype = 'advisory' and l.pid = pg_catalog.pg_backend_pid() and l.objsubid = 2
                and l.classid = (pg_catalog.hashtext('aipt.cleanup')::bigint & 4294967295)::oid
                and l.objid = (pg_catalog.hashtext(v_run.job)::bigint & 4294967295)::oid) then
    perform pg_catalog.pg_advisory_unlock(pg_catalog.hashtext('aipt.cleanup'), pg_catalog.hashtext(v_run.job));
  end if;
  return next v_run;
end;
$$;

comment on function public.cleanup_finish(bigint, text) is
  'Admin: closes a cleanup run as ok (p_error null) or error, and releases its job lock.';
revoke all on function public.cleanup_finish(bigint, text) from public, anon;
grant execute on function public.cleanup_finish(bigint, text) to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- cleanup_stripe_events: one batch of finished events past retention
--   * ok/skipped events whose processing finished p_event_days ago, with their
--     (resolved) failure rows;
--   * dead events received p_event_days ago and dead for p_failure_days, with
--     their failure rows: both retentions must allow.
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
begin
  perform public._cleanup_require_admin('cleanup_stripe_events()');
  if p_dry_run then
    return query
      with gone as (
        select e.event_id from public.stripe_events e
         where e.status in ('ok', 'skipped') and coalesce(e.processed_at, e.received_at) < v_event_cutoff
        union all
        select e.event_id from public.stripe_events e
          join public.webhook_failures f on f.event_id = e.event_id
         where e.status = 'error' and f.next_retry is null and f.dead_at < v_failure_cutoff
           and e.received_at < v_event_cutoff
      )
      select 'stripe_events'::text, count(*) from gone
      union all
      select 'webhook_failures'::text, count(*) from public.webhook_failures f where f.event_id in (select event_id from gone);
    return;
  end if;

  v_ids := array(
    select e.event_id from public.stripe_events e
     where e.status in ('ok', 'skipped') and coalesce(e.processed_at, e.received_at) < v_event_cutoff
     order by coalesce(e.processed_at, e.received_at)
     limit p_batch_size
     for update skip locked);
  if cardinality(v_ids) < p_batch_size then
    v_ids := v_ids || array(
      select e.event_id from public.stripe_events e
        join public.webhook_failures f on f.event_id = e.event_id
       where e.status = 'error' and f.next_retry is null and f.dead_at < v_failure_cutoff
         and e.received_at < v_event_cutoff
       limit p_batch_size - cardinality(v_ids)
       for update of e, f skip locked);
  end if;

  delete from public.webhook_failures f where f.event_id = any (v_ids);
  get diagnostics v_failures = row_count;
  delete from public.stripe_events e where e.event_id = any (v_ids);
  get diagnostics v_events = row_count;

  perform public._cleanup_count(p_run_id, jsonb_build_object('stripe_events', v_events, 'webhook_failures', v_failures));
  return query values ('stripe_events'::text, v_events), ('webhook_failures'::text, v_failures);
end;
$$;

comment on function public.cleanup_stripe_events(integer, integer, integer, boolean, bigint) is
  'Admin: deletes one batch of finished Stripe events past retention (never unfinished ones); p_dry_run counts all.';
revoke all on function public.cleanup_stripe_events(integer, integer, integer, boolean, bigint) from public, anon;
grant execute on function public.cleanup_stripe_events(integer, integer, integer, boolean, bigint) to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- cleanup_webhook_failures: one batch of failure history past retention
-- Only failures resolved p_failure_days ago (the event succeeded later; the
-- event itself stays for its own retention). Dead failures go only with their
-- event (cleanup_stripe_events), retrying ones never.
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
  v_cutoff timestamptz := now() - make_interval(days => p_failure_days);
  v_count bigint;
begin
  perform public._cleanup_require_admin('cleanup_webhook_failures()');
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
revoke all on function public.cleanup_webhook_failures(integer, integer, boolean, bigint) from public, anon;
grant execute on function public.cleanup_webhook_failures(integer, integer, boolean, bigint) to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- cleanup_rate_limit: one batch of the rules of f_cleanup_rate_limit_data()
-- rate_limit_log rows older than p_log_days; buckets idle for p_bucket_days
-- (a bucket idle that long would be full again anyway). A bucket used while
-- this runs is skipped (locked) or kept (its last_request is rechecked).
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
  v_log_cutoff timestamptz := now() - make_interval(days => p_log_days);
  v_bucket_cutoff timestamptz := now() - make_interval(days => p_bucket_days);
  v_log bigint;
  v_buckets bigint;
begin
  perform public._cleanup_require_admin('cleanup_rate_limit()');
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
revoke all on function public.cleanup_rate_limit(integer, integer, integer, boolean, bigint) from public, anon;
grant execute on function public.cleanup_rate_limit(integer, integer, integer, boolean, bigint) to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- cleanup_deleted_content: hard-delete content soft-deleted 90 days ago
-- The work is public.f_cleanup_old_deleted_data() (23_neuron_delete_guard.sql):
-- one guarded hard delete at a time, each in the audit trail; content is rare
-- and human-paced, so one call is one batch. The 90 days are the hard-delete
-- rule of that file, not a setting. The dry run counts the rows past 90 days
-- that the guard lets go now, and their links.
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
           and (public._content_dependents('bundle', b.id, b.required_tier)).blockers is null
        union all
        select 'neuron', n.id from public.neurons n
         where n.deleted_at <= v_cutoff
           and (public._content_dependents('neuron', n.id, n.required_tier)).blockers is null
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
revoke all on function public.cleanup_deleted_content(boolean, bigint) from public, anon;
grant execute on function public.cleanup_deleted_content(boolean, bigint) to authenticated, service_role;

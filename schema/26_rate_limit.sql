-- =============================================================================
-- Rate limiting: a token bucket per caller and endpoint
--
-- The web app calls f_rate_limit_search() / f_rate_limit_content_access() (or
-- f_check_rate_limit() for any endpoint) through PostgREST before the work;
-- the ingest service calls f_check_rate_limit('stripe_webhook') itself.
--
--   * A bucket holds up to burst_size tokens and refills continuously at
--     requests_per_minute; a request spends p_tokens_required tokens.
--   * The decision is ONE statement (insert ... on conflict do update ...
--     returning): the row lock serialises concurrent calls, so no token is
--     spent twice and two first calls never collide on the insert.
--   * Tokens are double precision: fractional refill is kept, not rounded away.
--   * Who pays is decided here, never by the caller (see "Who pays" below).
--   * rate_limit_config.log_mode chooses what goes to rate_limit_log:
--     'all' (default) or 'blocked'.
--   * Buckets and log are UNLOGGED tables (see below): a check commits
--     without waiting for a WAL flush.
--
-- Built-in functions resolve from pg_catalog, which is always searched first;
-- every project object is schema-qualified and every function runs with
-- search_path = ''.
--
-- Upgrade: a database where the first version of this file ran (uuid ids,
-- integer tokens, no bucket_key, no log_mode) has its three tables moved
-- aside, rebuilt here, and its config, buckets and log copied over.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- Upgrade from the first version, step 1: move its tables aside.
-- Its views and functions go too (different shapes, search_path = public);
-- everything is created again below. A database already on this version, or
-- a new one, is left alone.
-- -----------------------------------------------------------------------------
do $$
begin
  if exists (
       select 1
       from (values ('public.rate_limit_config', 'log_mode'), ('public.rate_limit_buckets', 'bucket_key')) t (tbl, col)
       where to_regclass(t.tbl) is not null
         and not exists (
           select 1 from pg_catalog.pg_attribute a
           where a.attrelid = to_regclass(t.tbl) and a.attname = t.col and not a.attisdropped
         )
     )
  then
    drop view if exists public.v_rate_limit_dashboard, public.v_rate_limit_top_users;
    drop function if exists
      public.f_check_rate_limit(text, integer, uuid),
      public.f_rate_limit_search(uuid),
      public.f_rate_limit_content_access(uuid),
      public.f_rate_limit_admin_crud(uuid),
      public.f_cleanup_rate_limit_data();
    create schema if not exists rate_limit_v1;
    alter table if exists public.rate_limit_log set schema rate_limit_v1;
    alter table if exists public.rate_limit_buckets set schema rate_limit_v1;
    alter table if exists public.rate_limit_config set schema rate_limit_v1;
  end if;
end
$$;


-- -----------------------------------------------------------------------------
-- Tables
-- -----------------------------------------------------------------------------

-- One row per limited endpoint. Admins change it; the functions read it.
create table if not exists public.rate_limit_config (
  endpoint_key text primary key,
  requests_per_minute integer not null constraint rate_limit_config_rate_positive check (requests_per_minute > 0),
  burst_size integer not null constraint rate_limit_config_burst_positive check (burst_size > 0),
  window_size_minutes integer not null default 1 constraint rate_limit_config_window_positive check (window_size_minutes > 0),
  is_active boolean not null default true,
  log_mode text not null default 'all' constraint rate_limit_config_log_mode check (log_mode in ('all', 'blocked')),
  description text,
  created_at timestamptz not null default now()
);

comment on table public.rate_limit_config is
  'Token-bucket settings per endpoint: refill requests_per_minute, capacity burst_size. Admin-only to change.';
comment on column public.rate_limit_config.window_size_minutes is
  'Kept from the first version for compatibility; the token bucket needs only the rate and the burst.';
comment on column public.rate_limit_config.is_active is
  'false: no limit at all (every check is allowed, nothing is counted or logged).';
comment on column public.rate_limit_config.log_mode is
  'What f_check_rate_limit writes to rate_limit_log: ''all'' requests (default) or ''blocked'' only.';

-- One row per caller and endpoint. bucket_key names the caller:
--   'user:<uuid>'  a signed-in user (or a user named by a trusted caller),
--   'ip:<addr>'    an anonymous client address (IPv6 grouped by its /64),
--   'anon'         anonymous callers with no usable address, together,
--   'service'      trusted callers (service_role, its members, superusers) that
--                  name no user, together.
--
-- UNLOGGED, like the log below: bucket state is as disposable as a cache (after
-- a crash every bucket starts full again), and a check that writes only
-- unlogged tables commits without waiting for a WAL flush, which would
-- otherwise cost more than the whole check. A caller's own writes in the same
-- transaction stay as durable as ever. Not on read replicas or in physical
-- backups; `alter table ... set logged` trades that for a flush per check.
-- fillfactor leaves room on each page so the per-request update stays HOT
-- (no index is touched: no indexed column ever changes).
create unlogged table if not exists public.rate_limit_buckets (
  endpoint_key text not null references public.rate_limit_config (endpoint_key) on update cascade on delete cascade,
  bucket_key text not null,
  user_id uuid,
  tokens_remaining double precision not null,
  last_refill timestamptz not null,
  last_request timestamptz not null,
  request_count bigint not null default 0,
  last_allowed boolean not null default true,
  created_at timestamptz not null default now(),
  primary key (endpoint_key, bucket_key)
) with (fillfactor = 70);

-- A user's own buckets (row-level security reads by user_id).
create index if not exists rate_limit_buckets_user_id_idx
  on public.rate_limit_buckets (user_id) where user_id is not null;

comment on table public.rate_limit_buckets is
  'Token bucket per endpoint and caller (bucket_key: user:<uuid>, ip:<addr>, anon, service). Written only by f_check_rate_limit.';
comment on column public.rate_limit_buckets.last_allowed is
  'Whether the last request was allowed. Also how f_check_rate_limit learns its own decision: returning sees only the new row.';

-- What was decided. Append-only; f_cleanup_rate_limit_data() keeps 7 days.
-- No id column: nothing refers to a log row, and one index less per request.
-- UNLOGGED as above: a crash empties it (operational telemetry, not records).
create unlogged table if not exists public.rate_limit_log (
  request_timestamp timestamptz not null default now(),
  endpoint_key text not null,
  user_id uuid,
  ip_address inet,
  was_allowed boolean not null,
  tokens_consumed integer not null,
  tokens_remaining double precision not null
);

-- The dashboard (last hour) and the cleanup (older than 7 days) read by time:
-- rows arrive in time order, so a BRIN index serves both for almost nothing.
create index if not exists rate_limit_log_request_timestamp_brin
  on public.rate_limit_log using brin (request_timestamp) with (autosummarize = on);
-- Troubleshooting ("why was this user blocked?") and a user's own rows.
create index if not exists rate_limit_log_user_id_idx
  on public.rate_limit_log (user_id, request_timestamp) where user_id is not null;

comment on table public.rate_limit_log is
  'Rate-limit decisions (all, or blocked only: rate_limit_config.log_mode). Kept 7 days.';


-- -----------------------------------------------------------------------------
-- Upgrade from the first version, step 2: copy its rows over, then drop it.
-- Config keeps the admin's values; buckets become user:<uuid> buckets with
-- fractional tokens; the log keeps its rows without the uuid ids.
-- -----------------------------------------------------------------------------
do $$
begin
  if to_regnamespace('rate_limit_v1') is null then
    return;
  end if;

  if to_regclass('rate_limit_v1.rate_limit_config') is not null then
    insert into public.rate_limit_config
      (endpoint_key, requests_per_minute, burst_size, window_size_minutes, is_active, created_at)
    select c.endpoint_key, c.requests_per_minute, c.burst_size, coalesce(c.window_size_minutes, 1),
           coalesce(c.is_active, true), coalesce(c.created_at, now())
    from rate_limit_v1.rate_limit_config c
    on conflict (endpoint_key) do update
      set requests_per_minute = excluded.requests_per_minute,
          burst_size = excluded.burst_size,
          window_size_minutes = excluded.window_size_minutes,
          is_active = excluded.is_active,
          created_at = excluded.created_at;
  end if;

  if to_regclass('rate_limit_v1.rate_limit_buckets') is not null then
    insert into public.rate_limit_buckets
      (endpoint_key, bucket_key, user_id, tokens_remaining, last_refill, last_request, request_count, created_at)
    select distinct on (b.endpoint_key, k.bucket_key)
           b.endpoint_key, k.bucket_key, b.user_id, b.tokens_remaining, b.last_refill,
           coalesce(b.last_request, b.last_refill), coalesce(b.request_count, 0), coalesce(b.created_at, now())
    from rate_limit_v1.rate_limit_buckets b
    cross join lateral (select coalesce('user:' || b.user_id::text, 'anon') as bucket_key) k
    where exists (select 1 from public.rate_limit_config c where c.endpoint_key = b.endpoint_key)
    order by b.endpoint_key, k.bucket_key, b.last_request desc nulls last
    on conflict (endpoint_key, bucket_key) do nothing;
  end if;

  if to_regclass('rate_limit_v1.rate_limit_log') is not null then
    insert into public.rate_limit_log
      (request_timestamp, endpoint_key, user_id, ip_address, was_allowed, tokens_consumed, tokens_remaining)
    select coalesce(l.request_timestamp, now()), l.endpoint_key, l.user_id, l.ip_address, l.was_allowed,
           coalesce(l.tokens_consumed, case when l.was_allowed then 1 else 0 end), coalesce(l.tokens_remaining, 0)
    from rate_limit_v1.rate_limit_log l;
  end if;

  drop schema rate_limit_v1 cascade;
end
$$;


-- -----------------------------------------------------------------------------
-- The six endpoints. An existing row keeps its numbers (admins tune them); it
-- only gets the description when it has none (rows from the first version).
-- -----------------------------------------------------------------------------
insert into public.rate_limit_config (endpoint_key, requests_per_minute, burst_size, window_size_minutes, description)
values
  ('search', 30, 10, 1, 'Full-text search from the web app (f_rate_limit_search).'),
  ('content_access', 120, 30, 1, 'Opening a neuron or bundle (f_rate_limit_content_access).'),
  ('admin_crud', 60, 20, 1, 'Admin create/update/delete from the dashboard (f_rate_limit_admin_crud).'),
  ('stripe_webhook', 600, 200, 1, 'POST /webhooks/stripe in ingest: one shared bucket (trusted caller, no user).'),
  ('checkout', 10, 5, 1, 'Creating a Stripe checkout session.'),
  ('api_general', 100, 50, 1, 'Any other RPC the web app chooses to limit.')
on conflict (endpoint_key) do update
  set description = excluded.description
  where public.rate_limit_config.description is null;


-- -----------------------------------------------------------------------------
-- Row-level security and grants
-- Config: everyone reads, admins write. Buckets and log: a user reads their own
-- rows, admins read all, only f_check_rate_limit (the owner) writes.
-- service_role bypasses row-level security, as on Supabase.
-- -----------------------------------------------------------------------------
alter table public.rate_limit_config enable row level security;
alter table public.rate_limit_buckets enable row level security;
alter table public.rate_limit_log enable row level security;

drop policy if exists rate_limit_config_read on public.rate_limit_config;
create policy rate_limit_config_read on public.rate_limit_config for select using (true);
drop policy if exists rate_limit_config_admin_write on public.rate_limit_config;
create policy rate_limit_config_admin_write on public.rate_limit_config for all
  using ((select public.is_admin())) with check ((select public.is_admin()));

drop policy if exists rate_limit_buckets_read on public.rate_limit_buckets;
create policy rate_limit_buckets_read on public.rate_limit_buckets for select
  using (user_id = (select auth.uid()) or (select public.is_admin()));

drop policy if exists rate_limit_log_read on public.rate_limit_log;
create policy rate_limit_log_read on public.rate_limit_log for select
  using (user_id = (select auth.uid()) or (select public.is_admin()));

revoke all on public.rate_limit_config, public.rate_limit_buckets, public.rate_limit_log
  from public, anon, authenticated;
grant select on public.rate_limit_config to anon, authenticated;
grant insert, update, delete on public.rate_limit_config to authenticated;
grant select on public.rate_limit_buckets, public.rate_limit_log to authenticated;
grant all on public.rate_limit_config, public.rate_limit_buckets, public.rate_limit_log to service_role;


-- -----------------------------------------------------------------------------
-- Functions
-- -----------------------------------------------------------------------------

-- f_check_rate_limit: spend p_tokens_required tokens from the caller's bucket
-- for p_endpoint_key, or refuse.
--
-- Returns (allowed, tokens_remaining, reset_time, reason):
--   tokens_remaining  whole tokens left after this request;
--   reset_time        when the bucket holds enough tokens for this request
--                     (now() when it already does): Retry-After = reset_time - now();
--   reason            null for a plain decision; says why otherwise.
-- An unknown endpoint raises (22023). An inactive endpoint allows everything.
-- p_tokens_required below 1 or above the burst is refused without spending.
--
-- Who pays (the caller never chooses someone else's bucket):
--   * service_role, members of it and superusers (the server, the worker,
--     psql): the bucket of p_user_id; with no p_user_id, one shared 'service'
--     bucket per endpoint (ingest's stripe_webhook limit is that bucket);
--   * everyone else: auth.uid()'s bucket, whatever p_user_id says; with no
--     user, the client address PostgREST passes in request.headers
--     (x-forwarded-for first hop, else x-real-ip), else one shared 'anon' bucket.
--
-- SECURITY DEFINER: callers may read only their own buckets and cannot write
-- any; the function writes buckets and log on their behalf. It judges the
-- caller by the session's role (current_setting('role') / session_user), not
-- current_user, which inside this function is the owner.
create or replace function public.f_check_rate_limit(
  p_endpoint_key text,
  p_tokens_required integer default 1,
  p_user_id uuid default null
)
returns table (allowed boolean, tokens_remaining integer, reset_time timestamptz, reason text)
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_now constant timestamptz := now();
  v_role constant text := coalesce(nullif(current_setting('role', true), 'none'), session_user::text);
  v_rate integer;
  v_burst integer;
  v_active boolean;
  v_log_all boolean;
  v_headers jsonb;
  v_addr_text text;
  v_addr inet;
  v_user uuid;
  v_key text;
  v_tokens double precision;
begin
  select c.requests_per_minute, c.burst_size, c.is_active, c.log_mode = 'all'
    into v_rate, v_burst, v_active, v_log_all
    from public.rate_limit_config c
   where c.endpoint_key = p_endpoint_key;
  if not found then
    raise exception 'unknown rate-limit endpoint %', coalesce(quote_literal(p_endpoint_key), 'NULL')
      using errcode = 'invalid_parameter_value',
            hint = 'Endpoints are the rows of public.rate_limit_config.';
  end if;

  if not v_active then
    allowed := true;
    tokens_remaining := v_burst;
    reset_time := v_now;
    reason := format('rate limiting is off for %s (is_active = false)', p_endpoint_key);
    return next;
    return;
  end if;

  if p_tokens_required is null or p_tokens_required < 1 or p_tokens_required > v_burst then
    allowed := false;
    reason := format('p_tokens_required must be between 1 and the burst size of %s (%s), got %s',
                     p_endpoint_key, v_burst, coalesce(p_tokens_required::text, 'NULL'));
    return next;
    return;
  end if;

  -- The client address, when PostgREST passed the request's headers. An
  -- unparsable value counts as no address (the shared 'anon' bucket), so
  -- garbage in a header never buys a fresh bucket.
  v_headers := nullif(current_setting('request.headers', true), '')::jsonb;
  v_addr_text := coalesce(
    nullif(btrim(split_part(v_headers ->> 'x-forwarded-for', ',', 1)), ''),
    nullif(btrim(v_headers ->> 'x-real-ip'), '')
  );
  if v_addr_text is not null then
    begin
      v_addr := host(v_addr_text::inet)::inet;
    exception when data_exception then
      v_addr := null;
    end;
  end if;

  -- Who pays.
  if pg_has_role(v_role, 'service_role', 'member') then
    v_user := p_user_id;
    v_key := coalesce('user:' || p_user_id::text, 'service');
  else
    v_user := auth.uid();
    v_key := case
      when v_user is not null then 'user:' || v_user::text
      when family(v_addr) = 4 then 'ip:' || host(v_addr)
      when family(v_addr) = 6 then 'ip:' || network(set_masklen(v_addr, 64))::text
      else 'anon'
    end;
  end if;

  -- The decision, in one statement: refill by the time elapsed since
  -- last_refill (capped at the burst), spend if enough, log, return.
  with decided as (
    insert into public.rate_limit_buckets as b
      (endpoint_key, bucket_key, user_id, tokens_remaining, last_refill, last_request, request_count, last_allowed)
    values
      (p_endpoint_key, v_key, v_user, v_burst - p_tokens_required, v_now, v_now, 1, true)
    on conflict (endpoint_key, bucket_key) do update
      set (tokens_remaining, last_allowed) = (
            select case when r.tokens >= p_tokens_required then r.tokens - p_tokens_required else r.tokens end,
                   r.tokens >= p_tokens_required
            from (
              select least(
                       v_burst::double precision,
                       b.tokens_remaining + greatest(0, date_part('epoch', v_now - b.last_refill)) * v_rate / 60
                     ) as tokens
            ) r
          ),
          last_refill = greatest(b.last_refill, v_now),
          last_request = v_now,
          request_count = b.request_count + 1
    returning b.tokens_remaining as tokens, b.last_allowed as ok
  ), logged as (
    insert into public.rate_limit_log
      (request_timestamp, endpoint_key, user_id, ip_address, was_allowed, tokens_consumed, tokens_remaining)
    select v_now, p_endpoint_key, v_user, v_addr, d.ok, case when d.ok then p_tokens_required else 0 end, d.tokens
    from decided d
    where v_log_all or not d.ok
  )
  select d.ok, d.tokens into allowed, v_tokens from decided d;

  tokens_remaining := floor(v_tokens)::integer;
  reset_time := v_now + make_interval(secs => greatest(0, p_tokens_required - v_tokens) * 60 / v_rate);
  if not allowed then
    reason := format('rate limit exceeded for %s: %s token(s) needed, %s available',
                     p_endpoint_key, p_tokens_required, trim_scale(round(v_tokens::numeric, 2)));
  end if;
  return next;
end;
$$;

comment on function public.f_check_rate_limit(text, integer, uuid) is
  'Token-bucket check for an endpoint: (allowed, tokens_remaining, reset_time, reason). The bucket is the caller''s own; p_user_id counts only for service_role (and its members) and superusers.';

revoke all on function public.f_check_rate_limit(text, integer, uuid) from public;
grant execute on function public.f_check_rate_limit(text, integer, uuid) to anon, authenticated, service_role;

-- f_rate_limit_search: one 'search' token; true when the search may run.
-- VOLATILE because it writes (PostgREST runs STABLE functions read-only).
-- SECURITY INVOKER: f_check_rate_limit decides who pays; nothing to elevate here.
create or replace function public.f_rate_limit_search(p_user_id uuid default null)
returns boolean
language sql
volatile
set search_path = ''
as $$
  select r.allowed from public.f_check_rate_limit('search', 1, p_user_id) r
$$;

revoke all on function public.f_rate_limit_search(uuid) from public;
grant execute on function public.f_rate_limit_search(uuid) to anon, authenticated, service_role;

-- f_rate_limit_content_access: one 'content_access' token; true when the
-- content may be opened. VOLATILE and SECURITY INVOKER as above.
create or replace function public.f_rate_limit_content_access(p_user_id uuid default null)
returns boolean
language sql
volatile
set search_path = ''
as $$
  select r.allowed from public.f_check_rate_limit('content_access', 1, p_user_id) r
$$;

revoke all on function public.f_rate_limit_content_access(uuid) from public;
grant execute on function public.f_rate_limit_content_access(uuid) to anon, authenticated, service_role;

-- f_rate_limit_admin_crud: one 'admin_crud' token; true when the admin write
-- may go ahead. VOLATILE and SECURITY INVOKER as above.
create or replace function public.f_rate_limit_admin_crud(p_user_id uuid default null)
returns boolean
language sql
volatile
set search_path = ''
as $$
  select r.allowed from public.f_check_rate_limit('admin_crud', 1, p_user_id) r
$$;

revoke all on function public.f_rate_limit_admin_crud(uuid) from public;
grant execute on function public.f_rate_limit_admin_crud(uuid) to anon, authenticated, service_role;

-- f_cleanup_rate_limit_data: delete log rows older than 7 days and buckets
-- idle for 30 days (a bucket idle that long would be full again anyway).
-- Admins only: an admin JWT, service_role, or a superuser session such as the
-- worker's scheduler, which has no JWT.
-- SECURITY DEFINER so an admin JWT can delete rows it may only read.
create or replace function public.f_cleanup_rate_limit_data()
returns table (table_name text, deleted_count bigint, cleanup_date timestamptz)
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_count bigint;
begin
  if not public.is_admin() then
    raise exception 'f_cleanup_rate_limit_data() is for admins, service_role and superusers'
      using errcode = 'insufficient_privilege';
  end if;

  delete from public.rate_limit_log l where l.request_timestamp < now() - interval '7 days';
  get diagnostics v_count = row_count;
  return query select 'rate_limit_log'::text, v_count, now();

  delete from public.rate_limit_buckets b where b.last_request < now() - interval '30 days';
  get diagnostics v_count = row_count;
  return query select 'rate_limit_buckets'::text, v_count, now();
end;
$$;

comment on function public.f_cleanup_rate_limit_data() is
  'Deletes rate_limit_log rows older than 7 days and rate_limit_buckets idle for 30 days. Admins, service_role, superusers.';

revoke all on function public.f_cleanup_rate_limit_data() from public;
grant execute on function public.f_cleanup_rate_limit_data() to authenticated, service_role;


-- -----------------------------------------------------------------------------
-- Views (admin-only)
-- security_invoker: the reader's own rights and row-level security apply, and
-- the filter on is_admin() returns nothing to anyone else. Each count is
-- aggregated on its own before the join, so no join multiplies another.
-- No e-mails: users are shown by id (and anonymous callers by address).
-- -----------------------------------------------------------------------------

-- Per endpoint: buckets used and requests seen in the last hour. In log_mode
-- 'blocked' the log holds blocked requests only, so requests_last_hour counts
-- those alone.
create or replace view public.v_rate_limit_dashboard
with (security_invoker = true)
as
select
  c.endpoint_key,
  c.is_active,
  c.requests_per_minute,
  c.burst_size,
  c.log_mode,
  coalesce(b.active_buckets, 0) as active_buckets,
  coalesce(l.requests_last_hour, 0) as requests_last_hour,
  coalesce(l.blocked_last_hour, 0) as blocked_last_hour,
  coalesce(round(100.0 * l.blocked_last_hour / nullif(l.requests_last_hour, 0), 2), 0)::double precision
    as block_rate_percent
from public.rate_limit_config c
left join (
  select b.endpoint_key, count(*) as active_buckets
  from public.rate_limit_buckets b
  where b.last_request > now() - interval '1 hour'
  group by b.endpoint_key
) b on b.endpoint_key = c.endpoint_key
left join (
  select l.endpoint_key,
         count(*) as requests_last_hour,
         count(*) filter (where not l.was_allowed) as blocked_last_hour
  from public.rate_limit_log l
  where l.request_timestamp > now() - interval '1 hour'
  group by l.endpoint_key
) l on l.endpoint_key = c.endpoint_key
where (select public.is_admin());

-- Per caller over the last 24 hours, busiest first: a user by id, an
-- anonymous caller by address (both empty: service calls and anonymous
-- calls without an address).
create or replace view public.v_rate_limit_top_users
with (security_invoker = true)
as
select
  l.user_id,
  case when l.user_id is null then l.ip_address end as ip_address,
  count(*) as requests_last_day,
  count(*) filter (where not l.was_allowed) as blocked_last_day,
  array_agg(distinct l.endpoint_key order by l.endpoint_key) as endpoints,
  max(l.request_timestamp) as last_request
from public.rate_limit_log l
where l.request_timestamp > now() - interval '24 hours'
  and (select public.is_admin())
group by 1, 2
order by requests_last_day desc, last_request desc;

revoke all on public.v_rate_limit_dashboard, public.v_rate_limit_top_users from public, anon, authenticated;
grant select on public.v_rate_limit_dashboard, public.v_rate_limit_top_users to authenticated, service_role;

-- =============================================================================
-- Rate limiting, second version: the seed's limits, the deployed API
--
--   * A new database starts with the seed's six endpoints (per minute / burst,
--     window 1): search 60/120, content_access 30/60, admin_crud 100/200,
--     stripe_webhook 1000/2000, user_auth 10/20, api_general 120/240. The first
--     version's defaults are replaced where nobody changed them, and its
--     'checkout' endpoint goes where it was never changed nor used. Values an
--     operator set stay as they are.
--   * requests_per_minute may be 0: a bucket that never refills (the deployed
--     shop allowed it). Such a check never resets by itself: reset_time is
--     'infinity' when the tokens are not there.
--   * The deployed API keeps its return types and columns:
--     f_cleanup_rate_limit_data().deleted_count is integer again, and the two
--     admin views have the deployed columns first (then this project's).
--   * An anonymous caller's bucket is keyed by its address, taken from a
--     trusted place (rate_limit_settings): by default the last entry of
--     X-Forwarded-For, the one the proxy in front of PostgREST appended and no
--     client can write (a client can only add entries to its left). IPv6
--     addresses are keyed by their /64, IPv4-mapped ones as the IPv4 address.
--     Anonymous buckets of an endpoint are bounded (10,000 by default): past
--     that, new anonymous callers share one bucket.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Limits that make sense. Added NOT VALID where a deployed row breaks one, so
-- adopting such a database never fails; every new or changed row is checked.
-- -----------------------------------------------------------------------------
alter table public.rate_limit_config drop constraint if exists rate_limit_config_rate_positive;

do $$
declare
  c record;
  v_bad boolean;
begin
  for c in
    select * from (values
      ('rate_limit_config_rate_nonnegative', 'requests_per_minute >= 0'),
      ('rate_limit_config_burst_positive', 'burst_size > 0'),
      ('rate_limit_config_window_positive', 'window_size_minutes > 0')
    ) as t (name, expr)
  loop
    execute format('select exists (select 1 from public.rate_limit_config where not (%s))', c.expr) into v_bad;
    if not exists (select 1 from pg_catalog.pg_constraint
                   where conrelid = 'public.rate_limit_config'::regclass and conname = c.name) then
      execute format('alter table public.rate_limit_config add constraint %I check (%s) not valid', c.name, c.expr);
    end if;
    if not v_bad then
      execute format('alter table public.rate_limit_config validate constraint %I', c.name);
    end if;
  end loop;
end
$$;

-- -----------------------------------------------------------------------------
-- Row-level security: the policies of 26_rate_limit.sql and nothing else (the
-- deployed shop's own, which checked the admin once per row, go).
-- -----------------------------------------------------------------------------
do $$
declare
  p record;
begin
  for p in
    select tablename, policyname from pg_catalog.pg_policies
    where schemaname = 'public' and tablename in ('rate_limit_config', 'rate_limit_buckets', 'rate_limit_log')
      and policyname not in ('rate_limit_config_read', 'rate_limit_config_admin_write', 'rate_limit_buckets_read',
                             'rate_limit_log_read')
  loop
    execute format('drop policy %I on public.%I', p.policyname, p.tablename);
  end loop;
end
$$;

-- -----------------------------------------------------------------------------
-- Where an anonymous caller's address comes from, and how many anonymous
-- buckets an endpoint may hold. One row; admins change it.
--   client_address_header   x-forwarded-for (default), x-real-ip or
--                           cf-connecting-ip: the header PostgREST passes on
--   forwarded_for_position  for x-forwarded-for, which entry counting from
--                           the right: 1 (default) is the one the last proxy
--                           appended; 2 when a CDN in front of that proxy
--                           appended the client's (e.g. a custom domain
--                           behind Cloudflare). The single-address headers
--                           are trusted only where the proxy in front of
--                           PostgREST sets them, replacing the client's.
--   anonymous_buckets_max   per endpoint; past it, new anonymous callers
--                           share the 'anon' bucket (the table stays bounded
--                           however many addresses call)
-- -----------------------------------------------------------------------------
create table if not exists public.rate_limit_settings (
  id boolean primary key default true constraint rate_limit_settings_one_row check (id),
  client_address_header text not null default 'x-forwarded-for'
    constraint rate_limit_settings_header check (client_address_header in ('x-forwarded-for', 'x-real-ip', 'cf-connecting-ip')),
  forwarded_for_position integer not null default 1
    constraint rate_limit_settings_position check (forwarded_for_position between 1 and 10),
  anonymous_buckets_max integer not null default 10000
    constraint rate_limit_settings_anonymous_max check (anonymous_buckets_max > 0)
);

comment on table public.rate_limit_settings is
  'One row: where f_check_rate_limit() reads an anonymous caller''s address, and how many anonymous buckets an endpoint may hold.';

insert into public.rate_limit_settings (id) values (true) on conflict (id) do nothing;

alter table public.rate_limit_settings enable row level security;
drop policy if exists rate_limit_settings_admin on public.rate_limit_settings;
create policy rate_limit_settings_admin on public.rate_limit_settings for all
  using ((select public.is_admin())) with check ((select public.is_admin()));
revoke all on public.rate_limit_settings from public, anon, authenticated, service_role;
grant select, update on public.rate_limit_settings to authenticated, service_role;

-- The address an anonymous caller is limited by, from the request's headers as
-- PostgREST passes them (null: none usable). Internal: f_check_rate_limit's.
create or replace function public._rate_limit_client_address(p_headers jsonb, p_header text, p_position integer)
returns inet
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_entries text[];
  v_text text;
  v_addr inet;
begin
  if p_header = 'x-forwarded-for' then
    v_entries := string_to_array(p_headers ->> 'x-forwarded-for', ',');
    if cardinality(v_entries) >= p_position then
      v_text := btrim(v_entries[cardinality(v_entries) - p_position + 1]);
    end if;
  else
    v_text := btrim(p_headers ->> p_header);
  end if;
  if nullif(v_text, '') is null then
    return null;
  end if;
  begin
    v_addr := host(v_text::inet)::inet;
  exception when data_exception then
    return null;  -- garbage in a header never buys a fresh bucket
  end;
  -- An IPv4 address written as IPv6 (::ffff:a.b.c.d) is that IPv4 address.
  if v_addr << '::ffff:0:0/96'::inet then
    v_addr := '0.0.0.0'::inet + (v_addr - '::ffff:0.0.0.0'::inet);
  end if;
  return v_addr;
end;
$$;

comment on function public._rate_limit_client_address(jsonb, text, integer) is
  'Internal: the client address in the request headers at the trusted place (rate_limit_settings); IPv4-mapped as IPv4.';
revoke all on function public._rate_limit_client_address(jsonb, text, integer) from public, anon, authenticated, service_role;

-- -----------------------------------------------------------------------------
-- The seed's six endpoints
-- -----------------------------------------------------------------------------
update public.rate_limit_config c
   set requests_per_minute = s.rate, burst_size = s.burst
  from (values ('search', 30, 10, 60, 120), ('content_access', 120, 30, 30, 60), ('admin_crud', 60, 20, 100, 200),
               ('stripe_webhook', 600, 200, 1000, 2000), ('api_general', 100, 50, 120, 240))
       as s (endpoint_key, old_rate, old_burst, rate, burst)
 where c.endpoint_key = s.endpoint_key
   and (c.requests_per_minute, c.burst_size, c.window_size_minutes) = (s.old_rate, s.old_burst, 1);

insert into public.rate_limit_config (endpoint_key, requests_per_minute, burst_size, window_size_minutes, description)
values
  ('search', 60, 120, 1, 'Full-text search from the web app (f_rate_limit_search).'),
  ('content_access', 30, 60, 1, 'Opening a neuron or bundle (f_rate_limit_content_access).'),
  ('admin_crud', 100, 200, 1, 'Admin create/update/delete from the dashboard (f_rate_limit_admin_crud).'),
  ('stripe_webhook', 1000, 2000, 1, 'POST /webhooks/stripe in ingest: one shared bucket (trusted caller, no user).'),
  ('user_auth', 10, 20, 1, 'Sign-in, sign-up and password reset from the web app.'),
  ('api_general', 120, 240, 1, 'Any other RPC the web app chooses to limit.')
on conflict (endpoint_key) do update
  set description = excluded.description
  where public.rate_limit_config.description is null;

delete from public.rate_limit_config c
 where c.endpoint_key = 'checkout'
   and (c.requests_per_minute, c.burst_size, c.window_size_minutes, c.is_active, c.log_mode)
       = (10, 5, 1, true, 'all')
   and not exists (select 1 from public.rate_limit_buckets b where b.endpoint_key = c.endpoint_key)
   and not exists (select 1 from public.rate_limit_log l where l.endpoint_key = c.endpoint_key);

-- -----------------------------------------------------------------------------
-- f_check_rate_limit: as in 26_rate_limit.sql, with an anonymous caller's
-- address from its trusted place, anonymous buckets bounded, and a rate of 0
-- that never refills. See 26 for who pays and why SECURITY DEFINER.
-- -----------------------------------------------------------------------------
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
  v_settings public.rate_limit_settings;
  v_headers jsonb;
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

  -- Who pays.
  if pg_has_role(v_role, 'service_role', 'member') then
    v_user := p_user_id;
    v_key := coalesce('user:' || p_user_id::text, 'service');
  else
    v_user := auth.uid();
    if v_user is not null then
      v_key := 'user:' || v_user::text;
    else
      -- Anonymous: by the address at the trusted place of the request's headers.
      select * into v_settings from public.rate_limit_settings;
      v_headers := nullif(current_setting('request.headers', true), '')::jsonb;
      v_addr := public._rate_limit_client_address(
        v_headers, coalesce(v_settings.client_address_header, 'x-forwarded-for'),
        coalesce(v_settings.forwarded_for_position, 1));
      v_key := case
        when family(v_addr) = 4 then 'ip:' || host(v_addr)
        when family(v_addr) = 6 then 'ip:' || network(set_masklen(v_addr, 64))::text
        else 'anon'
      end;
      -- A new address, past the endpoint's bound on anonymous buckets: the shared one.
      if v_key <> 'anon'
         and not exists (select 1 from public.rate_limit_buckets b where b.endpoint_key = p_endpoint_key and b.bucket_key = v_key)
         and (select count(*) from public.rate_limit_buckets b
               where b.endpoint_key = p_endpoint_key and b.bucket_key >= 'ip:' and b.bucket_key < 'ip;')
             >= coalesce(v_settings.anonymous_buckets_max, 10000) then
        v_key := 'anon';
      end if;
    end if;
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
  reset_time := case
    when v_tokens >= p_tokens_required then v_now
    when v_rate > 0 then v_now + make_interval(secs => (p_tokens_required - v_tokens) * 60 / v_rate)
    else 'infinity'::timestamptz
  end;
  if not allowed then
    reason := format('rate limit exceeded for %s: %s token(s) needed, %s available%s',
                     p_endpoint_key, p_tokens_required, trim_scale(round(v_tokens::numeric, 2)),
                     case when v_rate = 0 then ' (this endpoint does not refill)' else '' end);
  end if;
  return next;
end;
$$;

comment on function public.f_check_rate_limit(text, integer, uuid) is
  'Token-bucket check for an endpoint: (allowed, tokens_remaining, reset_time, reason). The bucket is the caller''s own; p_user_id counts only for service_role (and its members) and superusers.';
revoke all on function public.f_check_rate_limit(text, integer, uuid) from public, anon, authenticated, service_role;
grant execute on function public.f_check_rate_limit(text, integer, uuid) to anon, authenticated, service_role;

-- -----------------------------------------------------------------------------
-- f_cleanup_rate_limit_data: the deployed return type (deleted_count integer).
-- Same rules as 26_rate_limit.sql: log rows older than 7 days, buckets idle for
-- 30 days; admins, service_role and superusers only.
-- -----------------------------------------------------------------------------
do $$
begin
  if (select t.typname from pg_catalog.pg_proc p
        cross join lateral unnest(p.proallargtypes, p.proargnames) as a (typ, name)
        join pg_catalog.pg_type t on t.oid = a.typ
      where p.oid = to_regprocedure('public.f_cleanup_rate_limit_data()') and a.name = 'deleted_count') = 'int8' then
    drop function public.f_cleanup_rate_limit_data();
  end if;
end
$$;

create or replace function public.f_cleanup_rate_limit_data()
returns table (table_name text, deleted_count integer, cleanup_date timestamptz)
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_count integer;
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
revoke all on function public.f_cleanup_rate_limit_data() from public, anon, authenticated, service_role;
grant execute on function public.f_cleanup_rate_limit_data() to authenticated, service_role;

-- The three wrappers of 26_rate_limit.sql, granted explicitly.
revoke all on function public.f_rate_limit_search(uuid), public.f_rate_limit_content_access(uuid),
  public.f_rate_limit_admin_crud(uuid) from public, anon, authenticated, service_role;
grant execute on function public.f_rate_limit_search(uuid), public.f_rate_limit_content_access(uuid),
  public.f_rate_limit_admin_crud(uuid) to anon, authenticated, service_role;

-- -----------------------------------------------------------------------------
-- Views (admin-only): the deployed columns first, in the deployed order and
-- types, then this project's. security_invoker: the reader's own rights and
-- row-level security apply, and the is_admin() filter returns nothing to
-- anyone else. E-mails come through public.admin_user_email().
-- -----------------------------------------------------------------------------
drop view if exists public.v_rate_limit_dashboard, public.v_rate_limit_top_users;

-- Per endpoint: its limits, buckets used and requests seen in the last hour.
-- In log_mode 'blocked' the log holds blocked requests only, so
-- requests_last_hour counts those alone.
create view public.v_rate_limit_dashboard with (security_invoker = true) as
select
  c.endpoint_key,
  c.requests_per_minute,
  c.burst_size,
  c.is_active,
  coalesce(b.active_buckets, 0) as active_buckets,
  coalesce(l.requests_last_hour, 0) as requests_last_hour,
  coalesce(l.blocked_last_hour, 0) as blocked_last_hour,
  round(coalesce(l.blocked_last_hour, 0)::numeric / nullif(l.requests_last_hour, 0) * 100, 2) as block_rate_percent,
  c.log_mode
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
where (select public.is_admin())
order by c.endpoint_key;

comment on view public.v_rate_limit_dashboard is
  'Admin: per endpoint, its limits, buckets used and requests (blocked) in the last hour.';

-- Per bucket (a caller on an endpoint), busiest over the last 24 hours first:
-- a user by e-mail and id, an anonymous caller by its bucket (ip:<address>).
create view public.v_rate_limit_top_users with (security_invoker = true) as
select
  public.admin_user_email(b.user_id)::character varying(255) as email,  -- auth.users.email's type on Supabase
  b.endpoint_key,
  floor(b.tokens_remaining)::integer as tokens_remaining,
  least(b.request_count, 2147483647)::integer as request_count,
  b.last_request,
  coalesce(l.requests, 0) as requests_last_24h,
  coalesce(l.blocked, 0) as blocked_last_24h,
  b.user_id,
  b.bucket_key
from public.rate_limit_buckets b
left join lateral (
  select count(*) as requests, count(*) filter (where not x.was_allowed) as blocked
  from public.rate_limit_log x
  where x.endpoint_key = b.endpoint_key
    and x.request_timestamp > now() - interval '24 hours'
    and case
          when b.user_id is not null then x.user_id = b.user_id
          when b.bucket_key like 'ip:%' then x.user_id is null and x.ip_address <<= substr(b.bucket_key, 4)::inet
          else x.user_id is null and x.ip_address is null
        end
) l on true
where (select public.is_admin())
order by requests_last_24h desc, blocked_last_24h desc, b.last_request desc;

comment on view public.v_rate_limit_top_users is
  'Admin: per bucket (caller and endpoint), requests and blocks in the last 24 hours, busiest first.';

revoke all on public.v_rate_limit_dashboard, public.v_rate_limit_top_users from public, anon, authenticated, service_role;
grant select on public.v_rate_limit_dashboard, public.v_rate_limit_top_users to authenticated, service_role;

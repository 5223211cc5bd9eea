-- =============================================================================
-- Rate limiting (26_rate_limit.sql): production checks, runnable with psql.
-- Included by tests/sql/test-production-infrastructure.sql, which runs inside
-- begin ... rollback as a superuser on a migrated database. This part also
-- works under its own savepoint and rolls it back, so it leaves nothing behind
-- even where the including script commits. The first wrong result raises.
-- Plain SQL only (no psql meta-commands): tests/test_rate_limit_sql_part.py
-- runs it through asyncpg as well.
-- =============================================================================

savepoint rate_limit_part;

-- -----------------------------------------------------------------------------
-- Shape: the seed's six endpoints, the API, locked-down functions, RLS everywhere.
-- -----------------------------------------------------------------------------
do $$
declare
  v_missing text;
begin
  select string_agg(k, ', ') into v_missing
  from unnest(array['search', 'content_access', 'admin_crud', 'stripe_webhook', 'user_auth', 'api_general']) k
  where not exists (select 1 from public.rate_limit_config c where c.endpoint_key = k);
  if v_missing is not null then
    raise exception 'rate_limit: endpoints missing from rate_limit_config: %', v_missing;
  end if;

  select string_agg(s, ', ') into v_missing
  from unnest(array[
    'public.f_check_rate_limit(text,integer,uuid)', 'public.f_rate_limit_search(uuid)',
    'public.f_rate_limit_content_access(uuid)', 'public.f_rate_limit_admin_crud(uuid)',
    'public.f_cleanup_rate_limit_data()'
  ]) s
  where to_regprocedure(s) is null;
  if v_missing is not null then
    raise exception 'rate_limit: functions missing: %', v_missing;
  end if;

  select string_agg(p.oid::regprocedure::text, ', ') into v_missing
  from pg_catalog.pg_proc p
  where p.pronamespace = 'public'::regnamespace and p.proname ~ 'rate_limit'
    and ((p.provolatile <> 'v' and p.proname !~ '^_')  -- the API writes; internal helpers may be pure
         or p.proconfig is distinct from array['search_path=""']
         or pg_catalog.has_function_privilege('public', p.oid, 'execute'));
  if v_missing is not null then
    raise exception 'rate_limit: functions not volatile, not search_path = '''', or executable by public: %', v_missing;
  end if;

  select string_agg(c.relname, ', ') into v_missing
  from pg_catalog.pg_class c
  where c.relnamespace = 'public'::regnamespace and c.relname like 'rate\_limit\_%' and c.relkind = 'r'
    and not c.relrowsecurity;
  if v_missing is not null then
    raise exception 'rate_limit: tables without row-level security: %', v_missing;
  end if;
end
$$;

-- -----------------------------------------------------------------------------
-- The bucket: burst, refusal with reset_time, exact fractional refill.
-- now() stands still inside this transaction; time passes by backdating.
-- -----------------------------------------------------------------------------
insert into public.rate_limit_config (endpoint_key, requests_per_minute, burst_size)
values ('part_test', 10, 3);

do $$
declare
  v_user constant uuid := '00000000-0000-0000-0000-0000000000a1';
  r record;
begin
  for i in 1..3 loop
    select * into r from public.f_check_rate_limit('part_test', 1, v_user);
    if not r.allowed or r.tokens_remaining <> 3 - i then
      raise exception 'rate_limit: burst call % gave %', i, r;
    end if;
  end loop;

  select * into r from public.f_check_rate_limit('part_test', 1, v_user);
  if r.allowed or r.reset_time <> now() + interval '6 seconds' or r.reason not like 'rate limit exceeded%' then
    raise exception 'rate_limit: 4th call should be refused until now() + 6 s, got %', r;
  end if;

  -- 3 s at 10/min = half a token: still refused, and the half is kept.
  update public.rate_limit_buckets set last_refill = last_refill - interval '3 seconds' where endpoint_key = 'part_test';
  select * into r from public.f_check_rate_limit('part_test', 1, v_user);
  if r.allowed or r.reset_time <> now() + interval '3 seconds' then
    raise exception 'rate_limit: after 3 s expected refusal until now() + 3 s, got %', r;
  end if;
  update public.rate_limit_buckets set last_refill = last_refill - interval '3 seconds' where endpoint_key = 'part_test';
  select * into r from public.f_check_rate_limit('part_test', 1, v_user);
  if not r.allowed then
    raise exception 'rate_limit: two half tokens should make one, got %', r;
  end if;

  if (select count(*) from public.rate_limit_log where endpoint_key = 'part_test') <> 6
     or (select count(*) from public.rate_limit_log where endpoint_key = 'part_test' and not was_allowed) <> 2 then
    raise exception 'rate_limit: expected 6 log rows, 2 blocked (log_mode all)';
  end if;
end
$$;

-- -----------------------------------------------------------------------------
-- Arguments: unknown endpoint raises, inactive allows, bad token counts refused.
-- -----------------------------------------------------------------------------
do $$
declare
  r record;
begin
  begin
    perform public.f_check_rate_limit('part_no_such_endpoint');
    raise exception 'rate_limit: an unknown endpoint did not raise';
  exception when invalid_parameter_value then
    null;
  end;

  select * into r from public.f_check_rate_limit('part_test', 0);
  if r.allowed or r.reason not like 'p_tokens_required must be between 1 and the burst size%' then
    raise exception 'rate_limit: p_tokens_required = 0 should be refused, got %', r;
  end if;
  select * into r from public.f_check_rate_limit('part_test', 4);
  if r.allowed then
    raise exception 'rate_limit: p_tokens_required above the burst should be refused, got %', r;
  end if;

  update public.rate_limit_config set is_active = false where endpoint_key = 'part_test';
  select * into r from public.f_check_rate_limit('part_test', 1, '00000000-0000-0000-0000-0000000000a1');
  if not r.allowed or r.reason not like 'rate limiting is off%' then
    raise exception 'rate_limit: an inactive endpoint should allow with a reason, got %', r;
  end if;
  update public.rate_limit_config set is_active = true where endpoint_key = 'part_test';
end
$$;

-- -----------------------------------------------------------------------------
-- Who pays: a signed-in user naming someone else spends their own tokens.
-- -----------------------------------------------------------------------------
set local role authenticated;
select set_config('request.jwt.claims', '{"role": "authenticated", "sub": "00000000-0000-0000-0000-0000000000b2"}', true);
do $$
declare
  r record;
begin
  select * into r from public.f_check_rate_limit('part_test', 3, '00000000-0000-0000-0000-0000000000a1');
  if not r.allowed or r.tokens_remaining <> 0 then
    raise exception 'rate_limit: a user naming someone else should get their own full bucket, got %', r;
  end if;
  if exists (select 1 from public.rate_limit_buckets where user_id <> '00000000-0000-0000-0000-0000000000b2') then
    raise exception 'rate_limit: a user can see buckets other than their own';
  end if;
  if (select count(*) from public.v_rate_limit_dashboard) <> 0 then
    raise exception 'rate_limit: a non-admin user can read v_rate_limit_dashboard';
  end if;
end
$$;
reset role;

-- Anonymous callers are counted by client address: the entry of x-forwarded-for the proxy appended (the
-- last, by default), not one the client wrote.
set local role anon;
select set_config('request.jwt.claims', '{"role": "anon"}', true);
select set_config('request.headers', '{"x-forwarded-for": "10.0.0.1, 203.0.113.77"}', true);
do $$
declare
  r record;
begin
  for i in 1..4 loop
    select * into r from public.f_check_rate_limit('part_test', 1, '00000000-0000-0000-0000-0000000000a1');
  end loop;
  if r.allowed then
    raise exception 'rate_limit: anonymous caller not limited on the 4th call of a burst of 3';
  end if;
end
$$;
reset role;
select set_config('request.jwt.claims', '', true), set_config('request.headers', '', true);

do $$
begin
  if not exists (select 1 from public.rate_limit_buckets where endpoint_key = 'part_test' and bucket_key = 'ip:203.0.113.77')
     or not exists (select 1 from public.rate_limit_buckets
                    where endpoint_key = 'part_test' and bucket_key = 'user:00000000-0000-0000-0000-0000000000b2') then
    raise exception 'rate_limit: expected buckets ip:203.0.113.77 and user:...b2, got %',
      (select array_agg(bucket_key) from public.rate_limit_buckets where endpoint_key = 'part_test');
  end if;
end
$$;

-- -----------------------------------------------------------------------------
-- Dashboard and cleanup.
-- -----------------------------------------------------------------------------
do $$
declare
  d record;
  v_deleted bigint;
begin
  select * into d from public.v_rate_limit_dashboard where endpoint_key = 'part_test';
  if d.active_buckets <> 3 or d.requests_last_hour <> 11 or d.blocked_last_hour <> 3 then
    raise exception 'rate_limit: dashboard for part_test expected 3 buckets, 11 requests, 3 blocked, got %', d;
  end if;

  update public.rate_limit_log set request_timestamp = request_timestamp - interval '8 days' where endpoint_key = 'part_test';
  update public.rate_limit_buckets set last_request = last_request - interval '31 days' where endpoint_key = 'part_test';
  select sum(deleted_count) into v_deleted
  from public.f_cleanup_rate_limit_data()
  where table_name in ('rate_limit_log', 'rate_limit_buckets');
  if exists (select 1 from public.rate_limit_log where endpoint_key = 'part_test')
     or exists (select 1 from public.rate_limit_buckets where endpoint_key = 'part_test') or v_deleted < 14 then
    raise exception 'rate_limit: cleanup left part_test rows behind (deleted %)', v_deleted;
  end if;
end
$$;

rollback to savepoint rate_limit_part;
release savepoint rate_limit_part;

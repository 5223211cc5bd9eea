-- =============================================================================
-- Adopting the shop's deployed schema
--
-- The shop's Supabase database was built before this project, from its own
-- SQL (00_complete_schema_ddl, 17_admin_roles_policies, 18_stripe_events_dlq,
-- 23_neuron_delete_guard, 26_rate_limit). Its tables hold the shop's data and
-- keep their names, but some have another shape than the files after this one
-- expect. This file reshapes exactly those, in place, so that the rest of the
-- chain applies to them as to a database it built itself, and loses nothing:
--
--   * every deployed column stays, with its values (new columns are added
--     beside them and filled from them; types change only where the values
--     stay equal, int to double precision or bigint);
--   * stripe_events.id and .type are renamed to the names the next files use
--     (event_id, event_type); 45_stripe_events_v2.sql names them back;
--   * webhook_failures' rows (one per failed attempt) are folded into one row
--     per event, each attempt kept in its history;
--   * the deployed functions whose return types the next files change are
--     dropped here and recreated there, with the deployed signatures.
--
-- Where nothing was deployed (a new database, or one this project built) this
-- file changes nothing. A table it knows by name but whose shape it does not
-- recognise is refused, before anything changes.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Refuse what cannot be adopted safely. Each known table is either absent,
-- already in this project's shape, or in the deployed shape.
-- -----------------------------------------------------------------------------
create function pg_temp.has_columns(p_table text, p_columns text[])
returns boolean
language sql
stable
as $$
  select to_regclass(p_table) is not null and not exists (
    select 1 from unnest(p_columns) c
    where not exists (
      select 1 from pg_catalog.pg_attribute a
      where a.attrelid = to_regclass(p_table) and a.attname = c and a.attnum > 0 and not a.attisdropped))
$$;

do $$
declare
  t record;
  v_refused text[] := '{}';
begin
  for t in
    select * from (values
      ('public.neurons', array['id', 'slug', 'title'], array['id', 'slug', 'title']),
      ('public.bundles', array['id', 'slug', 'title'], array['id', 'slug', 'title']),
      ('public.bundle_neurons', array['bundle_id', 'neuron_id'], array['bundle_id', 'neuron_id']),
      ('public.plans', array['tier', 'stripe_price_id'], array['code', 'stripe_price_id_month', 'stripe_price_id_year']),
      ('public.user_subscriptions', array['stripe_subscription_id', 'plan_tier', 'expires_at'],
                                    array['user_id', 'stripe_subscription_id', 'tier', 'status', 'current_period_end']),
      ('public.stripe_events', array['event_id', 'event_type', 'payload', 'status'],
                               array['id', 'type', 'payload', 'status', 'received_at', 'processed_at', 'error']),
      ('public.webhook_failures', array['event_id', 'failure_count', 'history'],
                                  array['id', 'event_id', 'context', 'error', 'created_at']),
      ('public.rate_limit_config', array['endpoint_key', 'requests_per_minute', 'burst_size', 'log_mode'],
                                   array['endpoint_key', 'requests_per_minute', 'burst_size', 'is_active']),
      ('public.rate_limit_buckets', array['endpoint_key', 'bucket_key', 'tokens_remaining'],
                                    array['id', 'user_id', 'endpoint_key', 'tokens_remaining', 'last_refill', 'last_request']),
      ('public.rate_limit_log', array['request_timestamp', 'endpoint_key', 'was_allowed'],
                                array['request_timestamp', 'endpoint_key', 'was_allowed', 'tokens_remaining']),
      ('public.user_roles', array['user_id', 'role'], array['user_id', 'role'])
    ) as k (tbl, ours, deployed)
  loop
    if to_regclass(t.tbl) is not null
       and not pg_temp.has_columns(t.tbl, t.ours) and not pg_temp.has_columns(t.tbl, t.deployed) then
      v_refused := v_refused || format('%s (neither this project''s columns %s nor the deployed ones %s)',
                                       t.tbl, t.ours, t.deployed);
    end if;
  end loop;
  if to_regclass('public.neurons') is not null
     and not pg_temp.has_columns('public.neurons', array['content_full'])
     and not pg_temp.has_columns('public.neurons', array['body']) then
    v_refused := v_refused || 'public.neurons (no content_full column)'::text;
  end if;
  if cardinality(v_refused) > 0 then
    raise exception 'cannot adopt %', array_to_string(v_refused, '; ')
      using errcode = 'object_not_in_prerequisite_state',
            hint = 'these tables exist with a shape this project does not know; rename them or adapt them by hand first';
  end if;
end
$$;

-- -----------------------------------------------------------------------------
-- Access tiers. The deployed content keeps its tier as the plan_tier enum
-- ('free' < 'architect' < 'initiate' < 'elite'), which the web app reads and
-- writes by name. This project compares tiers as integers (a subscription's
-- plan_tier reaches content whose required_tier is at most it), so the enum
-- gets a cast to its rank, 0 for free up to 3 for elite: written ::integer,
-- or by assigning it to an integer. Not implicit: that would make every
-- comparison of a plan_tier with a quoted name ambiguous.
-- -----------------------------------------------------------------------------
do $$
begin
  if to_regtype('public.plan_tier') is null then
    return;
  end if;
  create or replace function public.plan_tier_rank(p_tier public.plan_tier)
  returns integer
  language sql
  immutable
  strict
  set search_path = ''
  as $f$
    select case p_tier
      when 'free' then 0 when 'architect' then 1 when 'initiate' then 2 when 'elite' then 3 end
  $f$;
  comment on function public.plan_tier_rank(public.plan_tier) is
    'The rank of a deployed plan_tier (free 0, architect 1, initiate 2, elite 3): its cast to integer.';
  revoke all on function public.plan_tier_rank(public.plan_tier) from public, anon, authenticated, service_role;
  grant execute on function public.plan_tier_rank(public.plan_tier) to anon, authenticated, service_role;
  if not exists (select 1 from pg_catalog.pg_cast
                 where castsource = 'public.plan_tier'::regtype and casttarget = 'integer'::regtype) then
    create cast (public.plan_tier as integer) with function public.plan_tier_rank(public.plan_tier) as assignment;
  end if;
end
$$;

-- -----------------------------------------------------------------------------
-- plans: one row per deployed tier, with a monthly and a yearly Stripe price.
-- tier is the code's rank; stripe_price_id is there for prices added later
-- (45_stripe_events_v2.sql maps a price to a plan by any of the three).
-- -----------------------------------------------------------------------------
do $$
begin
  if not pg_temp.has_columns('public.plans', array['code', 'stripe_price_id_month']) then
    return;
  end if;
  if not pg_temp.has_columns('public.plans', array['tier']) then
    alter table public.plans add column tier integer generated always as (
      case code when 'free' then 0 when 'architect' then 1 when 'initiate' then 2 when 'elite' then 3 end) stored;
  end if;
  if not pg_temp.has_columns('public.plans', array['stripe_price_id']) then
    alter table public.plans add column stripe_price_id text constraint plans_stripe_price_id_key unique;
  end if;
end
$$;

-- -----------------------------------------------------------------------------
-- user_subscriptions: the deployed rows (tier by name, current_period_end,
-- stripe_customer_id, one uuid id each, complimentary ones without Stripe ids)
-- get this project's columns beside them. last_event_created starts at the
-- row's last update, so a Stripe event older than what the web app wrote does
-- not overwrite it. A trigger keeps both sets of columns equal, whichever a
-- writer sets: the web app reads tier, status and current_period_end.
-- -----------------------------------------------------------------------------
do $$
begin
  if not pg_temp.has_columns('public.user_subscriptions', array['tier', 'current_period_end'])
     or pg_temp.has_columns('public.user_subscriptions', array['plan_tier']) then
    return;
  end if;
  alter table public.user_subscriptions
    add column customer_id text,
    add column plan_id uuid references public.plans (id),
    add column plan_tier integer not null default 0,
    add column expires_at timestamptz,
    add column cancel_at_period_end boolean not null default false,
    add column last_event_created bigint not null default 0,
    add column last_event_rank smallint not null default 0,
    add column ended_at timestamptz;
  update public.user_subscriptions s
     set customer_id = s.stripe_customer_id,
         plan_tier = case s.tier when 'free' then 0 when 'architect' then 1 when 'initiate' then 2 when 'elite' then 3 else 0 end,
         plan_id = (select p.id from public.plans p where p.code::text = s.tier),
         expires_at = s.current_period_end,
         last_event_created = coalesce(extract(epoch from coalesce(s.updated_at, s.created_at))::bigint, 0);
  -- Stripe's statuses, all of them (the deployed check knew four); a tier by name, free included.
  alter table public.user_subscriptions drop constraint if exists user_subscriptions_status_check;
  alter table public.user_subscriptions add constraint user_subscriptions_status_check
    check (status in ('incomplete', 'incomplete_expired', 'trialing', 'active', 'past_due', 'canceled', 'unpaid', 'paused'));
  alter table public.user_subscriptions drop constraint if exists user_subscriptions_tier_check;
  alter table public.user_subscriptions add constraint user_subscriptions_tier_check
    check (tier in ('free', 'architect', 'initiate', 'elite'));
end
$$;

create or replace function public.tg_user_subscriptions_deployed_columns()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_names constant text[] := array['free', 'architect', 'initiate', 'elite'];
begin
  -- The tier: whichever side the writer changed wins; a new row named by tier alone gets its rank.
  if tg_op = 'INSERT' then
    if new.plan_tier = 0 and new.tier is not null then
      new.plan_tier := coalesce(array_position(v_names, new.tier) - 1, 0);
    end if;
  elsif new.tier is distinct from old.tier and new.plan_tier = old.plan_tier then
    new.plan_tier := coalesce(array_position(v_names, new.tier) - 1, new.plan_tier);
  end if;
  new.tier := coalesce(v_names[new.plan_tier + 1], new.tier);

  if tg_op = 'UPDATE' and new.current_period_end is distinct from old.current_period_end
     and new.expires_at is not distinct from old.expires_at then
    new.expires_at := new.current_period_end;
  elsif tg_op = 'INSERT' and new.expires_at is null then
    new.expires_at := new.current_period_end;
  end if;
  new.current_period_end := new.expires_at;

  if tg_op = 'UPDATE' and new.stripe_customer_id is distinct from old.stripe_customer_id
     and new.customer_id is not distinct from old.customer_id then
    new.customer_id := new.stripe_customer_id;
  elsif tg_op = 'INSERT' and new.customer_id is null then
    new.customer_id := new.stripe_customer_id;
  end if;
  new.stripe_customer_id := new.customer_id;
  return new;
end
$$;

comment on function public.tg_user_subscriptions_deployed_columns() is
  'Keeps the deployed columns (tier, current_period_end, stripe_customer_id) equal to plan_tier, expires_at, customer_id.';
revoke all on function public.tg_user_subscriptions_deployed_columns() from public, anon, authenticated, service_role;

do $$
begin
  if pg_temp.has_columns('public.user_subscriptions', array['tier', 'current_period_end', 'stripe_customer_id', 'plan_tier'])
     and not exists (select 1 from pg_catalog.pg_trigger
                     where tgrelid = to_regclass('public.user_subscriptions') and tgname = 'user_subscriptions_deployed_columns') then
    create trigger user_subscriptions_deployed_columns
      before insert or update on public.user_subscriptions
      for each row execute function public.tg_user_subscriptions_deployed_columns();
  end if;
end
$$;

-- Where the deployed shape is not there, the trigger function has no table to serve.
do $$
begin
  if not exists (select 1 from pg_catalog.pg_trigger where tgfoid = 'public.tg_user_subscriptions_deployed_columns()'::regprocedure) then
    drop function public.tg_user_subscriptions_deployed_columns();
  end if;
end
$$;

-- -----------------------------------------------------------------------------
-- stripe_events: the deployed columns id, type, payload, status, received_at,
-- processed_at, error stay; Stripe's api_version, created and livemode are
-- read from the stored payloads. The deployed indexes are replaced by the
-- next files' (the pending rows, type and age).
-- -----------------------------------------------------------------------------
do $$
begin
  if not pg_temp.has_columns('public.stripe_events', array['id', 'type', 'error'])
     or pg_temp.has_columns('public.stripe_events', array['created']) then
    return;
  end if;
  alter table public.stripe_events rename column id to event_id;
  alter table public.stripe_events rename column type to event_type;
  alter table public.stripe_events
    add column api_version text,
    add column created bigint,
    add column livemode boolean not null default false;
  update public.stripe_events e
     set api_version = e.payload ->> 'api_version',
         created = coalesce(case when e.payload ->> 'created' ~ '^[0-9]{1,18}$' then (e.payload ->> 'created')::bigint end,
                            extract(epoch from e.received_at)::bigint),
         livemode = coalesce(case when jsonb_typeof(e.payload -> 'livemode') = 'boolean'
                                  then (e.payload ->> 'livemode')::boolean end, false);
  alter table public.stripe_events alter column created set not null;
  alter table public.stripe_events drop constraint if exists stripe_events_status_check;
  alter table public.stripe_events add constraint stripe_events_status_check
    check (status in ('pending', 'ok', 'error', 'skipped'));
  drop index if exists public.idx_se_status, public.idx_se_type, public.idx_se_received;
end
$$;

-- -----------------------------------------------------------------------------
-- webhook_failures: the deployed table has a row per failed attempt (event_id,
-- context, error, created_at), with neither a key on event_id nor a foreign
-- key. It becomes one row per event, the next files' shape, whose history
-- keeps every deployed row (its id, context, error and time). What an event's
-- failure row says follows from the event:
--   error    dead, as the deployed dead-letter queue had it, for an operator;
--   pending  an operator asked to process it again (the deployed reprocess
--            left it pending): it gets three attempts more;
--   ok       resolved;
--   gone     (its event row was deleted for a redelivery that never came)
--            dead, kept: the foreign key is added NOT VALID for these rows.
-- The first deployed row's id becomes the event's failure id.
-- -----------------------------------------------------------------------------
do $$
declare
  v_orphans integer;
begin
  if not pg_temp.has_columns('public.webhook_failures', array['context', 'error', 'created_at'])
     or pg_temp.has_columns('public.webhook_failures', array['failure_count']) then
    return;
  end if;
  create temporary table deployed_webhook_failures on commit drop as
    select * from public.webhook_failures;
  drop table public.webhook_failures;

  create table public.webhook_failures (
    id uuid primary key default gen_random_uuid(),
    event_id text not null unique,
    event_type text not null,
    failure_count integer not null default 0,
    max_retries integer not null,
    first_failure timestamptz not null default now(),
    last_failure timestamptz not null default now(),
    error_message text,
    error_code text,
    permanent boolean not null default false,
    next_retry timestamptz,
    dead_at timestamptz,
    alerted_at timestamptz,
    resolved_at timestamptz,
    history jsonb not null default '[]'::jsonb
  );

  insert into public.webhook_failures
    (id, event_id, event_type, failure_count, max_retries, first_failure, last_failure, error_message,
     dead_at, resolved_at, history)
  select f.first_id, f.event_id, coalesce(e.event_type, f.last_context, 'unknown'), f.attempts,
         f.attempts + case when e.status = 'pending' then 3 else 0 end,
         f.first_at, f.last_at, f.last_error,
         case when e.event_id is null or e.status = 'error' then f.last_at end,
         case when e.status in ('ok', 'skipped') then coalesce(e.processed_at, f.last_at) end,
         f.history || case when e.event_id is null
                           then jsonb_build_array(jsonb_build_object(
                                  'at', now(), 'note', 'kept by the upgrade: its stripe_events row had been deleted'))
                           else '[]'::jsonb end
  from (
    select d.event_id,
           count(*)::integer as attempts,
           min(d.created_at) as first_at,
           max(d.created_at) as last_at,
           (array_agg(d.id order by d.created_at, d.id))[1] as first_id,
           (array_agg(d.error order by d.created_at desc, d.id desc))[1] as last_error,
           (array_agg(d.context order by d.created_at desc, d.id desc))[1] as last_context,
           jsonb_agg(jsonb_build_object('attempt', d.n, 'at', d.created_at, 'error', d.error, 'code', null,
                                        'permanent', false, 'context', d.context, 'deployed_id', d.id)
                     order by d.n) as history
    from (select w.*, row_number() over (partition by w.event_id order by w.created_at, w.id) as n
          from deployed_webhook_failures w) d
    group by d.event_id
  ) f
  left join public.stripe_events e on e.event_id = f.event_id;

  select count(*) into v_orphans
  from public.webhook_failures f
  where not exists (select 1 from public.stripe_events e where e.event_id = f.event_id);
  alter table public.webhook_failures add constraint webhook_failures_event_id_fkey
    foreign key (event_id) references public.stripe_events (event_id) on delete cascade not valid;
  if v_orphans = 0 then
    alter table public.webhook_failures validate constraint webhook_failures_event_id_fkey;
  end if;
end
$$;

-- The deployed functions whose return types change (18 and 26 recreate them;
-- 45 and 50 give them back their deployed signatures and return types).
do $$
begin
  if exists (select 1 from pg_catalog.pg_proc
             where oid = to_regprocedure('public.consume_stripe_event(text, text, jsonb)')
               and prosrc like '%f_handle_checkout_session%') then
    drop function public.consume_stripe_event(text, text, jsonb);
  end if;
  if exists (select 1 from pg_catalog.pg_proc
             where oid = to_regprocedure('public.reprocess_stripe_event(text)')
               and prosrc like '%consume_stripe_event(r.id, r.type, r.payload)%') then
    drop function public.reprocess_stripe_event(text);
  end if;
end
$$;

-- -----------------------------------------------------------------------------
-- Rate limiting: the deployed tables keep every column and row. Config gets
-- log_mode and description; buckets get a bucket_key (a user's, or for a row
-- without a user its own id, which no caller matches) as their key, with
-- fractional tokens; the log's tokens become fractional too. Both become
-- UNLOGGED like the next files' (see 26_rate_limit.sql), and lose the
-- deployed indexes and keys that every check would otherwise pay for.
-- -----------------------------------------------------------------------------
-- The deployed views and cleanup function (26 and 50 create them again).
do $$
begin
  if exists (select 1 from pg_catalog.pg_proc
             where oid = to_regprocedure('public.f_cleanup_rate_limit_data()') and prosrc like '%f_is_admin_current_user%') then
    drop function public.f_cleanup_rate_limit_data();
  end if;
  if exists (select 1 from pg_catalog.pg_views where schemaname = 'public' and viewname = 'v_rate_limit_top_users'
             and definition like '%auth.users%') then
    drop view public.v_rate_limit_dashboard, public.v_rate_limit_top_users;
  end if;
end
$$;

do $$
begin
  if not pg_temp.has_columns('public.rate_limit_config', array['endpoint_key', 'is_active'])
     or pg_temp.has_columns('public.rate_limit_config', array['log_mode']) then
    return;
  end if;
  alter table public.rate_limit_config
    add column log_mode text not null default 'all' constraint rate_limit_config_log_mode check (log_mode in ('all', 'blocked')),
    add column description text;
end
$$;

do $$
begin
  if not pg_temp.has_columns('public.rate_limit_buckets', array['id', 'user_id', 'tokens_remaining'])
     or pg_temp.has_columns('public.rate_limit_buckets', array['bucket_key']) then
    return;
  end if;
  alter table public.rate_limit_buckets
    add column bucket_key text,
    add column last_allowed boolean not null default true;
  update public.rate_limit_buckets b set bucket_key = coalesce('user:' || b.user_id::text, 'deployed:' || b.id::text);
  alter table public.rate_limit_buckets
    alter column bucket_key set not null,
    alter column tokens_remaining type double precision,
    alter column request_count type bigint,
    drop constraint if exists rate_limit_buckets_pkey,
    drop constraint if exists rate_limit_buckets_user_id_endpoint_key_key,
    drop constraint if exists rate_limit_buckets_endpoint_key_fkey,
    add constraint rate_limit_buckets_pkey primary key (endpoint_key, bucket_key),
    add constraint rate_limit_buckets_endpoint_key_fkey foreign key (endpoint_key)
      references public.rate_limit_config (endpoint_key) on update cascade on delete cascade;
  drop index if exists public.idx_rate_limit_buckets_user_endpoint, public.idx_rate_limit_buckets_last_refill,
    public.idx_rate_limit_buckets_cleanup;
  alter table public.rate_limit_buckets set (fillfactor = 70);
  alter table public.rate_limit_buckets set unlogged;
end
$$;

do $$
begin
  if not pg_temp.has_columns('public.rate_limit_log', array['id', 'user_agent'])
     or (select relpersistence = 'u' from pg_catalog.pg_class where oid = to_regclass('public.rate_limit_log')) then
    return;
  end if;
  alter table public.rate_limit_log
    alter column tokens_remaining type double precision,
    drop constraint if exists rate_limit_log_pkey,
    drop constraint if exists rate_limit_log_user_id_fkey;
  drop index if exists public.idx_rate_limit_log_user_time, public.idx_rate_limit_log_endpoint_time,
    public.idx_rate_limit_log_allowed;
  alter table public.rate_limit_log set unlogged;
end
$$;


drop function pg_temp.has_columns(text, text[]);

-- =============================================================================
-- Stripe events, second version: the deployed names, the deployed API
--
-- stripe_events keeps the columns of the seed and of the deployed shop's
-- 18_stripe_events_dlq.sql: id, type, payload, status, received_at,
-- processed_at, error (the troubleshooting queries people know use them),
-- plus api_version, created and livemode. webhook_failures is keyed by a uuid
-- as the seed's was. (18_stripe_events_dlq.sql named the first two event_id
-- and event_type and had no error column; 07 renamed the deployed ones to
-- those names for the files in between.)
--
-- The deployed API keeps its signatures, argument names included (PostgREST
-- calls by name), and its return types:
--   consume_stripe_event(p_id text, p_type text, p_payload jsonb) returns boolean
--   reprocess_stripe_event(p_id text) returns boolean (80_operator_actions.sql,
--   with the operators' other functions)
-- The worker calls apply_stripe_event(), which says what happened.
--
-- Checkout sessions and payment intents name their buyer as the web app and
-- the deployed code make them: client_reference_id, metadata.user_id,
-- metadata.userId (the web app's checkout route) or metadata.uid (the deployed
-- 18, with metadata.kind = neuron | bundle beside neuron_id / bundle_id).
-- A Stripe price maps to a plan by plans.stripe_price_id or, on the deployed
-- shop, by a plan's monthly or yearly price.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- stripe_events: the deployed names
-- -----------------------------------------------------------------------------
do $$
begin
  if exists (select 1 from pg_catalog.pg_attribute
             where attrelid = 'public.stripe_events'::regclass and attname = 'event_id' and not attisdropped) then
    alter table public.stripe_events rename column event_id to id;
    alter table public.stripe_events rename column event_type to type;
  end if;
end
$$;

alter table public.stripe_events add column if not exists error text;

comment on column public.stripe_events.error is
  'The last attempt''s error while the event is not applied (its history is in webhook_failures); null once it is.';

-- An event that failed before this column existed carries its last error.
update public.stripe_events e
   set error = f.error_message
  from public.webhook_failures f
 where f.event_id = e.id and e.status = 'error' and e.error is null and f.resolved_at is null;

-- -----------------------------------------------------------------------------
-- webhook_failures: a uuid key. A bigint id of the first version becomes the
-- uuid 00000000-0000-0000-0000-<its hex>, so it can still be told apart.
-- -----------------------------------------------------------------------------
do $$
begin
  if (select atttypid from pg_catalog.pg_attribute
      where attrelid = 'public.webhook_failures'::regclass and attname = 'id') = 'bigint'::regtype then
    alter table public.webhook_failures add column uid uuid;
    update public.webhook_failures f
       set uid = ('00000000-0000-0000-0000-' || lpad(to_hex(f.id), 12, '0'))::uuid;
    alter table public.webhook_failures drop constraint webhook_failures_pkey;
    alter table public.webhook_failures drop column id;
    alter table public.webhook_failures rename column uid to id;
    alter table public.webhook_failures alter column id set default gen_random_uuid(), alter column id set not null;
    alter table public.webhook_failures add constraint webhook_failures_pkey primary key (id);
  end if;
end
$$;

-- -----------------------------------------------------------------------------
-- Subscriptions also keep Stripe's period start (the deployed table had it).
-- Customers named by the deployed subscriptions are learned, so their later
-- events find the user.
-- -----------------------------------------------------------------------------
alter table public.user_subscriptions add column if not exists current_period_start timestamptz;

insert into public.stripe_customers (customer_id, user_id)
select distinct on (s.customer_id) s.customer_id, s.user_id
from public.user_subscriptions s
where s.customer_id is not null
order by s.customer_id, s.updated_at desc
on conflict (customer_id) do nothing;

-- =============================================================================
-- Appliers (internal: no grants; apply_stripe_event runs them as the owner)
-- =============================================================================

-- Who paid: client_reference_id, metadata.user_id / userId / uid, or a customer
-- we learned. Learns the customer → user mapping whenever an object names both.
create or replace function public.stripe_resolve_user(p_object jsonb)
returns uuid
language plpgsql
set search_path = ''
as $$
declare
  v_customer text := nullif(p_object ->> 'customer', '');
  v_named text := coalesce(nullif(p_object ->> 'client_reference_id', ''),
                           nullif(p_object -> 'metadata' ->> 'user_id', ''),
                           nullif(p_object -> 'metadata' ->> 'userId', ''),
                           nullif(p_object -> 'metadata' ->> 'uid', ''));
  v_user uuid;
begin
  if v_named is not null then
    if v_named !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
      raise exception 'user id % is not a uuid', v_named using errcode = 'PT002';
    end if;
    v_user := v_named::uuid;
    if v_customer is not null then
      insert into public.stripe_customers (customer_id, user_id)
      values (v_customer, v_user)
      on conflict (customer_id) do nothing;
    end if;
    return v_user;
  end if;

  if v_customer is not null then
    select c.user_id into v_user from public.stripe_customers c where c.customer_id = v_customer;
  end if;
  if v_user is null then
    raise exception 'user not known yet for customer %', coalesce(v_customer, '(none)')
      using errcode = 'PT001',
            hint = format('map it: aipt customers map %s USER (SQL: map_stripe_customer), then aipt dlq requeue; '
                          'a checkout.session.completed naming both teaches it too', coalesce(v_customer, 'CUS'));
  end if;
  return v_user;
end;
$$;

comment on function public.stripe_resolve_user(jsonb) is
  'The user a Stripe object belongs to (client_reference_id, metadata.user_id|userId|uid, or a learned customer); PT001 while unknown.';
revoke all on function public.stripe_resolve_user(jsonb) from public, anon, authenticated, service_role;

-- What was bought: metadata.neuron_id or metadata.bundle_id, which must exist.
-- The deployed checkout also says metadata.kind (neuron | bundle): it must agree.
create or replace function public.stripe_product(p_object jsonb, out neuron_id uuid, out bundle_id uuid)
language plpgsql
stable
set search_path = ''
as $$
declare
  v_neuron text := nullif(p_object -> 'metadata' ->> 'neuron_id', '');
  v_bundle text := nullif(p_object -> 'metadata' ->> 'bundle_id', '');
  v_kind text := nullif(p_object -> 'metadata' ->> 'kind', '');
  v_uuid constant text := '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$';
begin
  if v_neuron is not null and v_bundle is not null then
    raise exception 'metadata names both a neuron and a bundle' using errcode = 'PT002';
  end if;
  if v_kind is not null and (v_kind not in ('neuron', 'bundle')
                             or (v_kind = 'neuron' and v_neuron is null) or (v_kind = 'bundle' and v_bundle is null)) then
    raise exception 'metadata.kind is % but metadata names %', v_kind,
      coalesce('neuron ' || v_neuron, 'bundle ' || v_bundle, 'no product') using errcode = 'PT002';
  end if;
  if coalesce(v_neuron, v_bundle) !~ v_uuid then
    raise exception 'metadata product id % is not a uuid', coalesce(v_neuron, v_bundle) using errcode = 'PT002';
  end if;
  -- Compared as uuids, so the primary key serves the lookup.
  if v_neuron is not null then
    select n.id into neuron_id from public.neurons n where n.id = v_neuron::uuid;
    if neuron_id is null then
      raise exception 'unknown neuron %', v_neuron using errcode = 'PT002';
    end if;
  elsif v_bundle is not null then
    select b.id into bundle_id from public.bundles b where b.id = v_bundle::uuid;
    if bundle_id is null then
      raise exception 'unknown bundle %', v_bundle using errcode = 'PT002';
    end if;
  end if;
end;
$$;

comment on function public.stripe_product(jsonb) is
  'The neuron or bundle a Stripe object''s metadata names (metadata.kind must agree); PT002 for an unknown one.';
revoke all on function public.stripe_product(jsonb) from public, anon, authenticated, service_role;

-- The plan a Stripe price buys: by plans.stripe_price_id, or by the deployed
-- shop's stripe_price_id_month / stripe_price_id_year (read through to_jsonb,
-- so this one definition serves databases with and without those columns).
create or replace function public.stripe_plan_for_price(p_price text, out plan_id uuid, out tier integer)
language sql
stable
set search_path = ''
as $$
  select p.id, p.tier
  from public.plans p
  where p.stripe_price_id = p_price
     or to_jsonb(p) ->> 'stripe_price_id_month' = p_price
     or to_jsonb(p) ->> 'stripe_price_id_year' = p_price
  order by p.stripe_price_id = p_price desc nulls last
  limit 1
$$;

comment on function public.stripe_plan_for_price(text) is
  'The plan (and its tier) a Stripe price id maps to: plans.stripe_price_id, or a deployed plan''s monthly or yearly price.';
revoke all on function public.stripe_plan_for_price(text) from public, anon, authenticated, service_role;

-- Purchases. A checkout session and its payment intent are one purchase, keyed
-- on the payment intent (or on the session when it has none, e.g. a 100% coupon).
create or replace function public.stripe_apply_checkout(p_session jsonb)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_user uuid;
  v_product record;
  v_pi text := nullif(p_session ->> 'payment_intent', '');
begin
  v_user := public.stripe_resolve_user(p_session);
  -- A subscription checkout teaches the customer mapping; the subscription events do the rest.
  if p_session ->> 'mode' <> 'payment' then
    return;
  end if;
  -- Delayed payment methods complete the session unpaid; the money is not in yet.
  if p_session ->> 'payment_status' = 'unpaid' then
    return;
  end if;
  select * into v_product from public.stripe_product(p_session);
  if v_product.neuron_id is null and v_product.bundle_id is null then
    raise exception 'checkout session % names no neuron_id or bundle_id in its metadata', p_session ->> 'id'
      using errcode = 'PT002';
  end if;

  if v_pi is not null then
    insert into public.user_purchases as p
      (user_id, neuron_id, bundle_id, payment_intent_id, checkout_session_id, amount, currency)
    values (v_user, v_product.neuron_id, v_product.bundle_id, v_pi, p_session ->> 'id',
            (p_session ->> 'amount_total')::integer, p_session ->> 'currency')
    on conflict (payment_intent_id) do update
      set checkout_session_id = coalesce(p.checkout_session_id, excluded.checkout_session_id),
          amount = coalesce(excluded.amount, p.amount),
          currency = coalesce(excluded.currency, p.currency);
  else
    insert into public.user_purchases
      (user_id, neuron_id, bundle_id, checkout_session_id, amount, currency)
    values (v_user, v_product.neuron_id, v_product.bundle_id, p_session ->> 'id',
            (p_session ->> 'amount_total')::integer, p_session ->> 'currency')
    on conflict (checkout_session_id) do nothing;
  end if;
end;
$$;

comment on function public.stripe_apply_checkout(jsonb) is
  'Applies checkout.session.completed: learns the customer, records a paid one-off purchase.';
revoke all on function public.stripe_apply_checkout(jsonb) from public, anon, authenticated, service_role;

-- A payment intent records a purchase only when its metadata names the product
-- (checkout copies it there when asked); otherwise it completes the amount of
-- the purchase its checkout session made, or is a subscription payment.
create or replace function public.stripe_apply_payment_intent(p_intent jsonb)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_user uuid;
  v_product record;
  v_amount integer := coalesce(nullif((p_intent ->> 'amount_received')::integer, 0), (p_intent ->> 'amount')::integer);
begin
  select * into v_product from public.stripe_product(p_intent);
  if v_product.neuron_id is null and v_product.bundle_id is null then
    update public.user_purchases p
       set amount = coalesce(p.amount, v_amount),
           currency = coalesce(p.currency, p_intent ->> 'currency')
     where p.payment_intent_id = p_intent ->> 'id';
    return;
  end if;

  v_user := public.stripe_resolve_user(p_intent);
  insert into public.user_purchases as p (user_id, neuron_id, bundle_id, payment_intent_id, amount, currency)
  values (v_user, v_product.neuron_id, v_product.bundle_id, p_intent ->> 'id', v_amount, p_intent ->> 'currency')
  on conflict (payment_intent_id) do update
    set amount = coalesce(p.amount, excluded.amount),
        currency = coalesce(p.currency, excluded.currency);
end;
$$;

comment on function public.stripe_apply_payment_intent(jsonb) is
  'Applies payment_intent.succeeded: one purchase per payment intent, merged with its checkout session.';
revoke all on function public.stripe_apply_payment_intent(jsonb) from public, anon, authenticated, service_role;

-- Subscriptions. Stripe does not deliver in order and several events share a
-- second, so a subscription remembers the (created, rank) of the last event it
-- applied and takes only newer ones; rank orders created < updated < deleted
-- within one second. A deleted subscription is terminal.
create or replace function public.stripe_apply_subscription(p_sub jsonb, p_event_type text, p_created bigint)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_user uuid;
  v_item jsonb := p_sub -> 'items' -> 'data' -> 0;
  v_price text := coalesce(v_item -> 'price' ->> 'id', v_item -> 'plan' ->> 'id', p_sub -> 'plan' ->> 'id');
  v_plan record;
  v_rank smallint := case p_event_type
                       when 'customer.subscription.created' then 1
                       when 'customer.subscription.updated' then 2
                       else 3 end;
  v_deleted boolean := p_event_type = 'customer.subscription.deleted';
  v_period_start bigint := coalesce((p_sub ->> 'current_period_start')::bigint, (v_item ->> 'current_period_start')::bigint);
  v_period_end bigint := coalesce((p_sub ->> 'current_period_end')::bigint, (v_item ->> 'current_period_end')::bigint);
begin
  if p_sub ->> 'id' is null then
    raise exception 'subscription object has no id' using errcode = 'PT002';
  end if;
  -- A subscription we already hold keeps its user, even when this event names neither user nor known customer.
  select s.user_id into v_user from public.user_subscriptions s where s.stripe_subscription_id = p_sub ->> 'id';
  if v_user is null then
    v_user := public.stripe_resolve_user(p_sub);
  end if;
  select * into v_plan from public.stripe_plan_for_price(v_price);
  if v_plan.plan_id is null and not v_deleted then
    raise exception 'unknown price % (no plan maps it to a tier)', coalesce(v_price, '(none)') using errcode = 'PT002',
      hint = format('add a plan for it: aipt plans add %s TIER (SQL: add_plan_price), then aipt dlq requeue',
                    coalesce(v_price, 'PRICE'));
  end if;

  insert into public.user_subscriptions as s
    (stripe_subscription_id, user_id, customer_id, plan_id, plan_tier, status, current_period_start, expires_at,
     cancel_at_period_end, last_event_created, last_event_rank, ended_at)
  values (p_sub ->> 'id', v_user, p_sub ->> 'customer', v_plan.plan_id, coalesce(v_plan.tier, 0), p_sub ->> 'status',
          to_timestamp(v_period_start), to_timestamp(v_period_end),
          coalesce((p_sub ->> 'cancel_at_period_end')::boolean, false),
          p_created, v_rank, case when v_deleted then to_timestamp(p_created) end)
  on conflict (stripe_subscription_id) do update
    set user_id = excluded.user_id,
        customer_id = excluded.customer_id,
        plan_id = coalesce(excluded.plan_id, s.plan_id),
        plan_tier = case when excluded.plan_id is null then s.plan_tier else excluded.plan_tier end,
        status = excluded.status,
        current_period_start = coalesce(excluded.current_period_start, s.current_period_start),
        expires_at = excluded.expires_at,
        cancel_at_period_end = excluded.cancel_at_period_end,
        last_event_created = excluded.last_event_created,
        last_event_rank = excluded.last_event_rank,
        ended_at = coalesce(s.ended_at, excluded.ended_at),
        updated_at = now()
    where s.ended_at is null
      and (excluded.last_event_created, excluded.last_event_rank) >= (s.last_event_created, s.last_event_rank);
end;
$$;

comment on function public.stripe_apply_subscription(jsonb, text, bigint) is
  'Applies customer.subscription.*: newest event wins, deletion is terminal, the price maps to a plan''s tier.';
revoke all on function public.stripe_apply_subscription(jsonb, text, bigint) from public, anon, authenticated, service_role;

-- stripe_apply_invoice (18_stripe_events_dlq.sql) is unchanged: it reads no renamed column.

-- =============================================================================
-- apply_stripe_event: apply one event exactly once, and say what happened
-- Locks the event's row, so concurrent deliveries of one event serialise and
-- the second sees it done. Business writes and the status change commit
-- together or not at all. Raises on failure: the caller records it (the worker
-- through record_stripe_event_failure, psql users through reprocess_stripe_event).
-- Returns 'ok', 'skipped' (a type we do not handle) or 'duplicate' (already done).
-- SECURITY DEFINER: the worker's role (service_role, or a member of it) needs
-- no rights on the tables and helpers; EXECUTE is the gate.
-- =============================================================================
create or replace function public.apply_stripe_event(p_id text, p_type text, p_payload jsonb)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_status text;
  v_object jsonb := p_payload -> 'data' -> 'object';
  v_created bigint := coalesce((p_payload ->> 'created')::bigint, extract(epoch from now())::bigint);
  v_result text := 'ok';
begin
  if p_payload ->> 'id' is distinct from p_id or p_payload ->> 'type' is distinct from p_type then
    raise exception 'payload is not event % of type %', p_id, p_type using errcode = 'PT002';
  end if;

  -- An admin may hand an event straight from psql: store it like ingest would.
  insert into public.stripe_events (id, type, api_version, created, livemode, payload)
  values (p_id, p_type, p_payload ->> 'api_version', v_created,
          coalesce((p_payload ->> 'livemode')::boolean, false), p_payload)
  on conflict (id) do nothing;

  select e.status into v_status from public.stripe_events e where e.id = p_id for update;
  if v_status in ('ok', 'skipped') then
    return 'duplicate';
  end if;
  if jsonb_typeof(v_object) is distinct from 'object' then
    raise exception 'event % has no data.object', p_id using errcode = 'PT002';
  end if;

  case p_type
    when 'checkout.session.completed' then
      perform public.stripe_apply_checkout(v_object);
    when 'payment_intent.succeeded' then
      perform public.stripe_apply_payment_intent(v_object);
    when 'customer.subscription.created', 'customer.subscription.updated', 'customer.subscription.deleted' then
      perform public.stripe_apply_subscription(v_object, p_type, v_created);
    when 'invoice.payment_succeeded', 'invoice.payment_failed' then
      perform public.stripe_apply_invoice(v_object, v_created);
    else
      v_result := 'skipped';
  end case;

  update public.stripe_events e set status = v_result, processed_at = now(), error = null where e.id = p_id;
  update public.webhook_failures f set next_retry = null, resolved_at = now()
   where f.event_id = p_id and f.resolved_at is null;
  return v_result;
end;
$$;

comment on function public.apply_stripe_event(text, text, jsonb) is
  'Applies a Stripe event once (row lock + status): ''ok'', ''skipped'' or ''duplicate''; raises on failure.';
revoke all on function public.apply_stripe_event(text, text, jsonb) from public, anon, authenticated, service_role;
grant execute on function public.apply_stripe_event(text, text, jsonb) to service_role;

-- -----------------------------------------------------------------------------
-- The deployed API. Dropped and created again: the first version named the
-- arguments otherwise and returned text, which CREATE OR REPLACE cannot change.
-- (reprocess_stripe_event likewise, in 80_operator_actions.sql.)
-- -----------------------------------------------------------------------------
do $$
begin
  if (select prorettype from pg_catalog.pg_proc
      where oid = to_regprocedure('public.consume_stripe_event(text, text, jsonb)')) = 'text'::regtype then
    drop function public.consume_stripe_event(text, text, jsonb);
  end if;
end
$$;

-- consume_stripe_event: store an event (if new) and apply it. True when this
-- call applied it (ok or skipped), false when it was applied before. Raises on
-- failure, and then nothing is stored: the caller (the deployed webhook
-- function, or an admin in psql) answers with an error and Stripe retries.
-- SECURITY DEFINER as apply_stripe_event; service_role and the owner may call it.
create or replace function public.consume_stripe_event(p_id text, p_type text, p_payload jsonb)
returns boolean
language sql
security definer
set search_path = ''
as $$
  select public.apply_stripe_event(p_id, p_type, p_payload) <> 'duplicate'
$$;

comment on function public.consume_stripe_event(text, text, jsonb) is
  'The deployed API: stores and applies a Stripe event; true when this call applied it, false when it was done already.';
revoke all on function public.consume_stripe_event(text, text, jsonb) from public, anon, authenticated, service_role;
grant execute on function public.consume_stripe_event(text, text, jsonb) to service_role;

-- =============================================================================
-- record_stripe_event_failure: count a failed attempt and schedule the next
-- Called in the transaction after the failed one, with the error's SQLSTATE (or
-- the worker's exception class). Backoff is exponential with jitter (half
-- fixed, half random, so retries of a burst spread out), capped. A permanent
-- error, or the last allowed attempt, leaves next_retry null: dead. The
-- event's error column carries the last error.
-- Returns the attempt number, when to retry, and whether the event just died.
-- SECURITY DEFINER as apply_stripe_event.
-- =============================================================================
create or replace function public.record_stripe_event_failure(
  p_event_id text,
  p_error text,
  p_error_code text default null,
  p_max_attempts integer default 3,
  p_base_seconds double precision default 60,
  p_factor double precision default 2,
  p_cap_seconds double precision default 3600,
  out attempt integer,
  out next_retry timestamptz,
  out dead boolean
)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_event public.stripe_events;
  v_delay double precision;
  v_permanent constant boolean := public.stripe_error_is_permanent(p_error_code);
begin
  select * into v_event from public.stripe_events e where e.id = p_event_id for update;
  if v_event.id is null then
    raise exception 'no stripe event %', p_event_id using errcode = 'P0002';
  end if;
  if v_event.status in ('ok', 'skipped') then
    -- Another attempt applied it meanwhile: nothing failed that matters.
    attempt := null; next_retry := null; dead := false;
    return;
  end if;

  update public.stripe_events e set status = 'error', error = p_error where e.id = p_event_id;

  insert into public.webhook_failures as f (event_id, event_type, max_retries)
  values (p_event_id, v_event.type, p_max_attempts)
  on conflict (event_id) do nothing;

  update public.webhook_failures f
     set failure_count = f.failure_count + 1,
         last_failure = now(),
         error_message = p_error,
         error_code = p_error_code,
         permanent = v_permanent,
         resolved_at = null,
         history = f.history || jsonb_build_object(
           'attempt', f.failure_count + 1, 'at', now(), 'error', p_error, 'code', p_error_code,
           'permanent', v_permanent)
   where f.event_id = p_event_id
   returning f.failure_count, (v_permanent or f.failure_count >= f.max_retries) into attempt, dead;

  if dead then
    next_retry := null;
  else
    v_delay := least(p_cap_seconds, p_base_seconds * power(p_factor, attempt - 1));
    v_delay := v_delay / 2 + random() * v_delay / 2;
    next_retry := now() + make_interval(secs => v_delay);
  end if;

  update public.webhook_failures f
     set next_retry = record_stripe_event_failure.next_retry,
         dead_at = case when dead then now() end,
         alerted_at = case when dead then null else f.alerted_at end
   where f.event_id = p_event_id;
end;
$$;

comment on function public.record_stripe_event_failure(text, text, text, integer, double precision, double precision, double precision) is
  'Counts a failed attempt of an event, schedules its retry with backoff, or marks it dead.';
revoke all on function public.record_stripe_event_failure(text, text, text, integer, double precision, double precision, double precision)
  from public, anon, authenticated, service_role;
grant execute on function public.record_stripe_event_failure(text, text, text, integer, double precision, double precision, double precision)
  to service_role;

-- claim_dead_alert (18_stripe_events_dlq.sql) now runs as the owner too.
alter function public.claim_dead_alert(text) security definer;

-- -----------------------------------------------------------------------------
-- The deployed 18's handlers, where they exist, keep their signatures and do
-- what they were for through the appliers above. They never ran on the
-- deployed schema (it had no user_purchases table). For service_role only.
-- -----------------------------------------------------------------------------
do $$
begin
  if to_regprocedure('public.f_handle_checkout_session(jsonb)') is not null then
    create or replace function public.f_handle_checkout_session(p_obj jsonb)
    returns uuid
    language plpgsql
    security definer
    set search_path = ''
    as $f$
    begin
      perform public.stripe_apply_checkout(p_obj);
      return (select p.id from public.user_purchases p
               where p.payment_intent_id = p_obj ->> 'payment_intent' or p.checkout_session_id = p_obj ->> 'id'
               limit 1);
    end
    $f$;
    comment on function public.f_handle_checkout_session(jsonb) is
      'Deployed name: applies a checkout.session object (stripe_apply_checkout); returns the purchase id.';
    revoke all on function public.f_handle_checkout_session(jsonb) from public, anon, authenticated, service_role;
    grant execute on function public.f_handle_checkout_session(jsonb) to service_role;
  end if;

  if to_regprocedure('public.f_handle_payment_intent(jsonb)') is not null then
    create or replace function public.f_handle_payment_intent(p_obj jsonb)
    returns uuid
    language plpgsql
    security definer
    set search_path = ''
    as $f$
    begin
      perform public.stripe_apply_payment_intent(p_obj);
      return (select p.id from public.user_purchases p where p.payment_intent_id = p_obj ->> 'id');
    end
    $f$;
    comment on function public.f_handle_payment_intent(jsonb) is
      'Deployed name: applies a payment_intent object (stripe_apply_payment_intent); returns the purchase id.';
    revoke all on function public.f_handle_payment_intent(jsonb) from public, anon, authenticated, service_role;
    grant execute on function public.f_handle_payment_intent(jsonb) to service_role;
  end if;

  if to_regprocedure('public.f_handle_subscription(jsonb)') is not null then
    create or replace function public.f_handle_subscription(p_obj jsonb)
    returns uuid
    language plpgsql
    security definer
    set search_path = ''
    as $f$
    begin
      perform public.stripe_apply_subscription(p_obj, 'customer.subscription.updated', extract(epoch from now())::bigint);
      return (select (to_jsonb(s) ->> 'id')::uuid from public.user_subscriptions s
               where s.stripe_subscription_id = p_obj ->> 'id');
    end
    $f$;
    comment on function public.f_handle_subscription(jsonb) is
      'Deployed name: applies a subscription object as of now (stripe_apply_subscription); returns its row id.';
    revoke all on function public.f_handle_subscription(jsonb) from public, anon, authenticated, service_role;
    grant execute on function public.f_handle_subscription(jsonb) to service_role;
  end if;

  -- Pure helpers of the deployed 18: nothing the API needs.
  if to_regprocedure('public.f_lock_text(text)') is not null then
    revoke all on function public.f_lock_text(text) from public, anon, authenticated;
    grant execute on function public.f_lock_text(text) to service_role;
  end if;
  if to_regprocedure('public.f_map_sub_status(text)') is not null then
    revoke all on function public.f_map_sub_status(text) from public, anon, authenticated;
    grant execute on function public.f_map_sub_status(text) to service_role;
  end if;
end
$$;

-- =============================================================================
-- Row-level security and grants of the Stripe and billing tables. Whatever
-- policies they had (the deployed 00 let a user write their own subscription
-- row, and so give themselves any plan) give way to these: admins read
-- everything, a user reads their own purchases, subscriptions and nothing
-- else; only the functions above (as the owner) and service_role write.
-- One admin check per statement (an InitPlan), not one per row.
-- =============================================================================
do $$
declare
  p record;
begin
  for p in
    select tablename, policyname from pg_catalog.pg_policies
    where schemaname = 'public'
      and tablename in ('stripe_events', 'webhook_failures', 'plans', 'stripe_customers', 'user_purchases',
                        'user_subscriptions', 'invoices')
  loop
    execute format('drop policy %I on public.%I', p.policyname, p.tablename);
  end loop;
end
$$;

alter table public.stripe_events enable row level security;
alter table public.webhook_failures enable row level security;
alter table public.plans enable row level security;
alter table public.stripe_customers enable row level security;
alter table public.user_purchases enable row level security;
alter table public.user_subscriptions enable row level security;
alter table public.invoices enable row level security;

create policy stripe_events_admin_read on public.stripe_events for select using ((select public.is_admin()));
create policy webhook_failures_admin_read on public.webhook_failures for select using ((select public.is_admin()));
create policy plans_admin on public.plans for all
  using ((select public.is_admin())) with check ((select public.is_admin()));
create policy stripe_customers_admin_read on public.stripe_customers for select using ((select public.is_admin()));
create policy user_purchases_read on public.user_purchases for select
  using (user_id = (select auth.uid()) or (select public.is_admin()));
create policy user_subscriptions_read on public.user_subscriptions for select
  using (user_id = (select auth.uid()) or (select public.is_admin()));
create policy invoices_admin_read on public.invoices for select using ((select public.is_admin()));

revoke all on public.stripe_events, public.webhook_failures, public.plans, public.stripe_customers,
  public.user_purchases, public.user_subscriptions, public.invoices from public, anon, authenticated, service_role;
grant select on public.stripe_events, public.webhook_failures, public.stripe_customers, public.user_purchases,
  public.user_subscriptions, public.invoices to authenticated;
grant select, insert, update, delete on public.plans to authenticated;
grant select, insert, update, delete on public.stripe_events, public.webhook_failures, public.plans,
  public.stripe_customers, public.user_purchases, public.user_subscriptions, public.invoices to service_role;

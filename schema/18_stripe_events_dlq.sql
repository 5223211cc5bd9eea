-- =============================================================================
-- Stripe events and their dead-letter queue
--
-- stripe_events holds every accepted webhook, written by the ingest endpoint
-- before Stripe gets its 200. Postgres is the source of truth: the queue is only
-- a doorbell, and a sweeper re-rings it for rows still pending.
--
--   pending ──consume──▶ ok | skipped (a type we do not handle)
--      │
--      └──failure──▶ error ──retry (next_retry)──▶ ok
--                      └──attempts exhausted or permanent──▶ dead (next_retry is null)
--                                                      └──requeue──▶ one more attempt
--
-- webhook_failures keeps one row per failed event: the attempt count, the
-- schedule of the next retry, and the history of every attempt's error.
-- =============================================================================

create table if not exists public.stripe_events (
  event_id text primary key,
  event_type text not null,
  api_version text,
  created bigint not null,              -- Stripe's created (epoch seconds)
  livemode boolean not null default false,
  payload jsonb not null,
  status text not null default 'pending',
  received_at timestamptz not null default now(),
  processed_at timestamptz,
  constraint stripe_events_status_check check (status in ('pending', 'ok', 'error', 'skipped'))
);

-- The sweeper's scan: pending rows, oldest first.
create index if not exists stripe_events_pending_idx on public.stripe_events (received_at) where status = 'pending';
-- Operators list events by type and age.
create index if not exists stripe_events_type_received_idx on public.stripe_events (event_type, received_at desc);

create table if not exists public.webhook_failures (
  id bigint generated always as identity primary key,
  event_id text not null unique references public.stripe_events (event_id) on delete cascade,
  event_type text not null,
  failure_count integer not null default 0,
  max_retries integer not null,          -- attempts allowed in all; a requeue raises it by one
  first_failure timestamptz not null default now(),
  last_failure timestamptz not null default now(),
  error_message text,
  error_code text,                       -- SQLSTATE or exception class
  permanent boolean not null default false,
  next_retry timestamptz,                -- null: dead (or resolved)
  dead_at timestamptz,
  alerted_at timestamptz,                -- the death was reported (at most once per death)
  resolved_at timestamptz,
  history jsonb not null default '[]'::jsonb  -- [{attempt, at, error, code, permanent}], oldest first
);

-- The sweeper's scan for due retries, and the dead-letter listing.
create index if not exists webhook_failures_next_retry_idx on public.webhook_failures (next_retry) where next_retry is not null;
create index if not exists webhook_failures_dead_idx on public.webhook_failures (dead_at) where dead_at is not null and resolved_at is null;

-- -----------------------------------------------------------------------------
-- Row-level security: admins read; only the worker (owner) and service_role write.
-- -----------------------------------------------------------------------------
alter table public.stripe_events enable row level security;
alter table public.webhook_failures enable row level security;

drop policy if exists stripe_events_admin_read on public.stripe_events;
create policy stripe_events_admin_read on public.stripe_events for select using (public.is_admin());
drop policy if exists webhook_failures_admin_read on public.webhook_failures;
create policy webhook_failures_admin_read on public.webhook_failures for select using (public.is_admin());

revoke all on public.stripe_events, public.webhook_failures from public, anon, authenticated;
grant select on public.stripe_events, public.webhook_failures to authenticated;
grant all on public.stripe_events, public.webhook_failures to service_role;

-- =============================================================================
-- Errors the appliers raise
--   PT001  transient: the user is not known yet (a checkout may still bring the
--          customer mapping); retried with backoff.
--   PT002  permanent: the payload cannot be applied as it is (unknown product or
--          price, missing ids); goes dead at once for an operator.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Who paid: client_reference_id, metadata.user_id, or a customer we learned.
-- Learns the customer → user mapping whenever an event names both.
-- -----------------------------------------------------------------------------
create or replace function public.stripe_resolve_user(p_object jsonb)
returns uuid
language plpgsql
set search_path = ''
as $$
declare
  v_customer text := nullif(p_object ->> 'customer', '');
  v_named text := coalesce(nullif(p_object ->> 'client_reference_id', ''), nullif(p_object -> 'metadata' ->> 'user_id', ''));
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
      using errcode = 'PT001', hint = 'a checkout.session.completed naming this customer teaches the mapping';
  end if;
  return v_user;
end;
$$;

comment on function public.stripe_resolve_user(jsonb) is
  'The user a Stripe object belongs to; raises PT001 (retryable) while the customer is unknown.';
revoke all on function public.stripe_resolve_user(jsonb) from public, anon, authenticated;

-- -----------------------------------------------------------------------------
-- What was bought: metadata.neuron_id or metadata.bundle_id, which must exist.
-- Returns (neuron_id, bundle_id), both null when the metadata names neither.
-- -----------------------------------------------------------------------------
create or replace function public.stripe_product(p_object jsonb, out neuron_id uuid, out bundle_id uuid)
language plpgsql
stable
set search_path = ''
as $$
declare
  v_neuron text := nullif(p_object -> 'metadata' ->> 'neuron_id', '');
  v_bundle text := nullif(p_object -> 'metadata' ->> 'bundle_id', '');
  v_uuid constant text := '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$';
begin
  if v_neuron is not null and v_bundle is not null then
    raise exception 'metadata names both a neuron and a bundle' using errcode = 'PT002';
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
  'The neuron or bundle a Stripe object''s metadata names; raises PT002 for an unknown one.';
revoke all on function public.stripe_product(jsonb) from public, anon, authenticated;

-- -----------------------------------------------------------------------------
-- Purchases. A checkout session and its payment intent are one purchase, keyed
-- on the payment intent (or on the session when it has none, e.g. a 100% coupon).
-- -----------------------------------------------------------------------------
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
revoke all on function public.stripe_apply_checkout(jsonb) from public, anon, authenticated;

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
revoke all on function public.stripe_apply_payment_intent(jsonb) from public, anon, authenticated;

-- -----------------------------------------------------------------------------
-- Subscriptions. Stripe does not deliver in order and several events share a
-- second, so a subscription remembers the (created, rank) of the last event it
-- applied and takes only newer ones; rank orders created < updated < deleted
-- within one second. A deleted subscription is terminal.
-- -----------------------------------------------------------------------------
create or replace function public.stripe_apply_subscription(p_sub jsonb, p_event_type text, p_created bigint)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_user uuid;
  v_item jsonb := p_sub -> 'items' -> 'data' -> 0;
  v_price text := coalesce(v_item -> 'price' ->> 'id', v_item -> 'plan' ->> 'id', p_sub -> 'plan' ->> 'id');
  v_plan public.plans;
  v_rank smallint := case p_event_type
                       when 'customer.subscription.created' then 1
                       when 'customer.subscription.updated' then 2
                       else 3 end;
  v_deleted boolean := p_event_type = 'customer.subscription.deleted';
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
  select * into v_plan from public.plans pl where pl.stripe_price_id = v_price;
  if v_plan.id is null and not v_deleted then
    raise exception 'unknown price % (no plan maps it to a tier)', coalesce(v_price, '(none)') using errcode = 'PT002';
  end if;

  insert into public.user_subscriptions as s
    (stripe_subscription_id, user_id, customer_id, plan_id, plan_tier, status, expires_at,
     cancel_at_period_end, last_event_created, last_event_rank, ended_at)
  values (p_sub ->> 'id', v_user, p_sub ->> 'customer', v_plan.id, coalesce(v_plan.tier, 0), p_sub ->> 'status',
          to_timestamp(v_period_end), coalesce((p_sub ->> 'cancel_at_period_end')::boolean, false),
          p_created, v_rank, case when v_deleted then to_timestamp(p_created) end)
  on conflict (stripe_subscription_id) do update
    set user_id = excluded.user_id,
        customer_id = excluded.customer_id,
        plan_id = coalesce(excluded.plan_id, s.plan_id),
        plan_tier = case when excluded.plan_id is null then s.plan_tier else excluded.plan_tier end,
        status = excluded.status,
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
  'Applies customer.subscription.*: newest event wins, deletion is terminal, price maps to plan tier.';
revoke all on function public.stripe_apply_subscription(jsonb, text, bigint) from public, anon, authenticated;

-- -----------------------------------------------------------------------------
-- Invoices, in both API shapes: legacy top-level subscription / payment_intent,
-- current parent.subscription_details.subscription / payments.data[].payment.
-- An older event never overwrites a newer one's state.
-- -----------------------------------------------------------------------------
create or replace function public.stripe_apply_invoice(p_invoice jsonb, p_created bigint)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_subscription text := coalesce(
    case when jsonb_typeof(p_invoice -> 'subscription') = 'string' then p_invoice ->> 'subscription' end,
    p_invoice -> 'subscription' ->> 'id',
    p_invoice #>> '{parent,subscription_details,subscription}');
  v_payment_intent text := coalesce(
    case when jsonb_typeof(p_invoice -> 'payment_intent') = 'string' then p_invoice ->> 'payment_intent' end,
    (select pay -> 'payment' ->> 'payment_intent'
       from jsonb_array_elements(coalesce(p_invoice #> '{payments,data}', '[]'::jsonb)) pay
      where pay -> 'payment' ->> 'type' = 'payment_intent'
      order by (pay ->> 'created')::bigint desc nulls last
      limit 1));
begin
  if p_invoice ->> 'id' is null then
    raise exception 'invoice object has no id' using errcode = 'PT002';
  end if;
  insert into public.invoices as i
    (id, subscription_id, customer_id, payment_intent_id, status, amount_due, amount_paid, currency,
     attempt_count, last_event_created)
  values (p_invoice ->> 'id', v_subscription, p_invoice ->> 'customer', v_payment_intent, p_invoice ->> 'status',
          (p_invoice ->> 'amount_due')::integer, (p_invoice ->> 'amount_paid')::integer, p_invoice ->> 'currency',
          coalesce((p_invoice ->> 'attempt_count')::integer, 0), p_created)
  on conflict (id) do update
    set subscription_id = coalesce(excluded.subscription_id, i.subscription_id),
        customer_id = coalesce(excluded.customer_id, i.customer_id),
        payment_intent_id = coalesce(excluded.payment_intent_id, i.payment_intent_id),
        status = excluded.status,
        amount_due = excluded.amount_due,
        amount_paid = excluded.amount_paid,
        currency = excluded.currency,
        attempt_count = greatest(i.attempt_count, excluded.attempt_count),
        last_event_created = excluded.last_event_created,
        updated_at = now()
    where excluded.last_event_created >= i.last_event_created;
end;
$$;

comment on function public.stripe_apply_invoice(jsonb, bigint) is
  'Applies invoice.payment_succeeded|failed in the legacy or current shape; newest event wins.';
revoke all on function public.stripe_apply_invoice(jsonb, bigint) from public, anon, authenticated;

-- =============================================================================
-- consume_stripe_event: apply one event exactly once
-- Locks the event's row, so concurrent deliveries of one event serialise and
-- the second sees it done. Business writes and the status change commit
-- together or not at all. Raises on failure: the caller records it (the worker
-- through record_stripe_event_failure, psql users through reprocess_stripe_event).
-- Returns 'ok', 'skipped' (a type we do not handle) or 'duplicate' (already done).
-- =============================================================================
create or replace function public.consume_stripe_event(p_event_id text, p_event_type text, p_payload jsonb)
returns text
language plpgsql
set search_path = ''
as $$
declare
  v_status text;
  v_object jsonb := p_payload -> 'data' -> 'object';
  v_created bigint := coalesce((p_payload ->> 'created')::bigint, extract(epoch from now())::bigint);
  v_result text := 'ok';
begin
  if p_payload ->> 'id' is distinct from p_event_id or p_payload ->> 'type' is distinct from p_event_type then
    raise exception 'payload is not event % of type %', p_event_id, p_event_type using errcode = 'PT002';
  end if;

  -- An admin may hand an event straight from psql: store it like ingest would.
  insert into public.stripe_events (event_id, event_type, api_version, created, livemode, payload)
  values (p_event_id, p_event_type, p_payload ->> 'api_version', v_created,
          coalesce((p_payload ->> 'livemode')::boolean, false), p_payload)
  on conflict (event_id) do nothing;

  select e.status into v_status from public.stripe_events e where e.event_id = p_event_id for update;
  if v_status in ('ok', 'skipped') then
    return 'duplicate';
  end if;
  if jsonb_typeof(v_object) is distinct from 'object' then
    raise exception 'event % has no data.object', p_event_id using errcode = 'PT002';
  end if;

  case p_event_type
    when 'checkout.session.completed' then
      perform public.stripe_apply_checkout(v_object);
    when 'payment_intent.succeeded' then
      perform public.stripe_apply_payment_intent(v_object);
    when 'customer.subscription.created', 'customer.subscription.updated', 'customer.subscription.deleted' then
      perform public.stripe_apply_subscription(v_object, p_event_type, v_created);
    when 'invoice.payment_succeeded', 'invoice.payment_failed' then
      perform public.stripe_apply_invoice(v_object, v_created);
    else
      v_result := 'skipped';
  end case;

  update public.stripe_events e set status = v_result, processed_at = now() where e.event_id = p_event_id;
  update public.webhook_failures f set next_retry = null, resolved_at = now()
   where f.event_id = p_event_id and f.resolved_at is null;
  return v_result;
end;
$$;

comment on function public.consume_stripe_event(text, text, jsonb) is
  'Applies a Stripe event once (row lock + status) and marks it ok or skipped; raises on failure.';
revoke all on function public.consume_stripe_event(text, text, jsonb) from public, anon, authenticated;
grant execute on function public.consume_stripe_event(text, text, jsonb) to service_role;

-- =============================================================================
-- stripe_error_is_permanent: can no retry fix this error?
-- PT002 (cannot apply as it is), data exceptions (22), integrity violations
-- (23) and undefined objects or syntax (42) are permanent: they go dead at once
-- for an operator. Everything else (PT001 user not known yet, deadlocks, lost
-- connections, an exception class name from the worker) is worth retrying.
-- =============================================================================
create or replace function public.stripe_error_is_permanent(p_error_code text)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select coalesce(p_error_code = 'PT002' or (p_error_code ~ '^[0-9A-Z]{5}$' and left(p_error_code, 2) in ('22', '23', '42')), false)
$$;

comment on function public.stripe_error_is_permanent(text) is
  'True for a SQLSTATE no retry can fix (PT002, classes 22, 23, 42).';
revoke all on function public.stripe_error_is_permanent(text) from public, anon, authenticated;
grant execute on function public.stripe_error_is_permanent(text) to service_role;

-- =============================================================================
-- record_stripe_event_failure: count a failed attempt and schedule the next
-- Called in the transaction after the failed one, with the error's SQLSTATE (or
-- the worker's exception class). Backoff is exponential with jitter (half
-- fixed, half random, so retries of a burst spread out), capped. A permanent
-- error, or the last allowed attempt, leaves next_retry null: dead.
-- Returns the attempt number, when to retry, and whether the event just died.
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
set search_path = ''
as $$
declare
  v_event public.stripe_events;
  v_delay double precision;
  v_permanent constant boolean := public.stripe_error_is_permanent(p_error_code);
begin
  select * into v_event from public.stripe_events e where e.event_id = p_event_id for update;
  if v_event.event_id is null then
    raise exception 'no stripe event %', p_event_id using errcode = 'P0002';
  end if;
  if v_event.status in ('ok', 'skipped') then
    -- Another attempt applied it meanwhile: nothing failed that matters.
    attempt := null; next_retry := null; dead := false;
    return;
  end if;

  update public.stripe_events e set status = 'error' where e.event_id = p_event_id;

  insert into public.webhook_failures as f (event_id, event_type, max_retries)
  values (p_event_id, v_event.event_type, p_max_attempts)
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
  from public, anon, authenticated;
grant execute on function public.record_stripe_event_failure(text, text, text, integer, double precision, double precision, double precision)
  to service_role;

-- =============================================================================
-- requeue_stripe_event: an operator gives a dead event one more attempt now
-- Keeps the history; raises (and changes nothing) for an event that does not
-- exist or is not dead. Returns the attempt number the retry will be.
-- SECURITY DEFINER so an admin JWT (through PostgREST) can run it without
-- write grants on the tables; the is_admin() check is the gate.
-- =============================================================================
create or replace function public.requeue_stripe_event(p_event_id text)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_failure public.webhook_failures;
  v_status text;
begin
  if not public.is_admin() then
    raise exception 'only admins may requeue events' using errcode = '42501';
  end if;
  select e.status into v_status from public.stripe_events e where e.event_id = p_event_id for update;
  if v_status is null then
    raise exception 'no stripe event %', p_event_id using errcode = 'P0002';
  end if;
  select * into v_failure from public.webhook_failures f where f.event_id = p_event_id;
  if v_status <> 'error' or v_failure.next_retry is not null or v_failure.id is null then
    raise exception 'event % is not dead (status %, %)', p_event_id, v_status,
      case when v_failure.next_retry is not null then 'retry due ' || v_failure.next_retry::text else 'no failure' end
      using errcode = 'PT003';
  end if;
  update public.webhook_failures f
     set max_retries = f.failure_count + 1,
         next_retry = now(),
         dead_at = null,
         permanent = false
   where f.event_id = p_event_id;
  return v_failure.failure_count + 1;
end;
$$;

comment on function public.requeue_stripe_event(text) is
  'Admin: makes a dead event due for one more attempt now (the sweeper or the CLI enqueues it).';
revoke all on function public.requeue_stripe_event(text) from public, anon, authenticated;
grant execute on function public.requeue_stripe_event(text) to authenticated, service_role;

-- =============================================================================
-- reprocess_stripe_event: run an event again from its stored payload, now
-- For psql: applies it in this session; a failure is recorded (the event stays
-- dead, with the new error in its history) instead of raised. Returns the
-- outcome: 'ok', 'skipped', 'duplicate' or 'error: <message>'.
-- SECURITY DEFINER for the same reason as requeue_stripe_event.
-- =============================================================================
create or replace function public.reprocess_stripe_event(p_event_id text)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_event public.stripe_events;
  v_result text;
  v_message text;
  v_code text;
begin
  if not public.is_admin() then
    raise exception 'only admins may reprocess events' using errcode = '42501';
  end if;
  select * into v_event from public.stripe_events e where e.event_id = p_event_id;
  if v_event.event_id is null then
    raise exception 'no stripe event %', p_event_id using errcode = 'P0002';
  end if;
  begin
    v_result := public.consume_stripe_event(v_event.event_id, v_event.event_type, v_event.payload);
  exception when others then
    get stacked diagnostics v_message = message_text, v_code = returned_sqlstate;
    update public.webhook_failures f set max_retries = f.failure_count + 1 where f.event_id = p_event_id;
    perform public.record_stripe_event_failure(p_event_id, v_message, v_code, 1);
    v_result := 'error: ' || v_message;
  end;
  return v_result;
end;
$$;

comment on function public.reprocess_stripe_event(text) is
  'Admin: applies a stored event again now; records a failure instead of raising.';
revoke all on function public.reprocess_stripe_event(text) from public, anon, authenticated;
grant execute on function public.reprocess_stripe_event(text) to authenticated, service_role;

-- =============================================================================
-- claim_dead_alert: the right to announce one death, granted once
-- The first caller for a death gets a row (and alerted_at is set); every later
-- caller, from any worker, gets none, so a death is never announced twice. The
-- count of announced deaths comes back too; claims take a lock, so that count
-- grows by one per claim and exactly one death is seen crossing the threshold.
-- =============================================================================
create or replace function public.claim_dead_alert(p_event_id text)
returns table (event_type text, attempts integer, error_message text, dead_count bigint)
language plpgsql
set search_path = ''
as $$
begin
  perform pg_catalog.pg_advisory_xact_lock(hashtext('aipt.claim_dead_alert'));
  return query
  with claimed as (
    update public.webhook_failures f
       set alerted_at = now()
     where f.event_id = p_event_id and f.dead_at is not null and f.alerted_at is null
     returning f.event_type, f.failure_count, f.error_message
  )
  -- The subquery sees the table before this claim: count the deaths already announced, plus this one.
  select c.event_type, c.failure_count, c.error_message,
         1 + (select count(*) from public.webhook_failures d
               where d.dead_at is not null and d.alerted_at is not null and d.resolved_at is null)
  from claimed c;
end;
$$;

comment on function public.claim_dead_alert(text) is
  'Marks a dead event as announced; returns its details (and the dead count) only to the first caller.';
revoke all on function public.claim_dead_alert(text) from public, anon, authenticated;
grant execute on function public.claim_dead_alert(text) to service_role;

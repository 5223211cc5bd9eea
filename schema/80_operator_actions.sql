-- =============================================================================
-- What operators do to events, and the record of it
--
-- An incident closes from the command line (aipt dlq ..., aipt events ...)
-- or from psql with these admin-only functions; each records who did what,
-- when and why in stripe_event_actions, append-only:
--   requeue_stripe_event(id)          a dead event gets one more attempt now
--   retry_stripe_event(id)            a retrying event's next attempt runs now
--   discard_stripe_event(id, reason)  a dead, retrying or pending event is
--                                     resolved without being applied: skipped,
--                                     marked discarded, needing no attention
--   replay_stripe_event(id)           an applied (or skipped) event is applied
--                                     again from its payload (idempotent: the
--                                     appliers upsert), like `stripe events resend`
--   reprocess_stripe_event(id)        applies an event in this session
-- stripe_event_state() names what an event is: pending, ok, skipped,
-- retrying, dead or discarded.
-- and, to fix a cause without writing tables by hand:
--   map_stripe_customer(customer, user)   teaches the customer → user mapping
--   add_plan_price(price, tier)           maps a Stripe price to a plan
-- Each takes p_by, the operator's name (aipt passes user@host); without it the
-- record names the admin's JWT (e-mail, else user id), else the session role.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- The record
-- -----------------------------------------------------------------------------
create table if not exists public.stripe_event_actions (
  id bigint generated always as identity primary key,
  event_id text not null,
  occurred_at timestamptz not null default now(),
  action text not null constraint stripe_event_actions_action_check
    check (action in ('requeue', 'retry', 'discard', 'replay', 'reprocess', 'map_customer', 'add_plan_price')),
  actor text not null,
  reason text,
  detail jsonb not null default '{}'::jsonb
);

comment on table public.stripe_event_actions is
  'Operators'' actions on Stripe events (requeue, retry, discard, replay, reprocess) and the fixes they made: who, when, why. Append-only.';

create index if not exists stripe_event_actions_event_idx on public.stripe_event_actions (event_id, id);

-- A discarded event: resolved by an operator without being applied.
alter table public.stripe_events add column if not exists discarded_at timestamptz;
comment on column public.stripe_events.discarded_at is
  'Set when an operator discarded the event (status skipped, never applied); stripe_event_actions says who and why.';

-- -----------------------------------------------------------------------------
-- What an event is, in operators' words
-- stripe_events.status says pending | ok | skipped | error; operators need
-- more: an error is either retrying (an attempt is scheduled) or dead (none
-- is), and a skipped event may have been discarded by hand. One definition,
-- for `aipt events list --status`, `aipt status` and psql alike.
-- -----------------------------------------------------------------------------
create or replace function public.stripe_event_state(p_status text, p_next_retry timestamptz, p_discarded_at timestamptz)
returns text
language sql
immutable
set search_path = ''
as $$
  select case
           when p_discarded_at is not null then 'discarded'
           when p_status = 'error' and p_next_retry is not null then 'retrying'
           when p_status = 'error' then 'dead'
           else p_status
         end
$$;

comment on function public.stripe_event_state(text, timestamptz, timestamptz) is
  'pending | ok | skipped | retrying | dead | discarded, from an event''s status, its failure''s next_retry and discarded_at.';
revoke all on function public.stripe_event_state(text, timestamptz, timestamptz) from public, anon, authenticated, service_role;
grant execute on function public.stripe_event_state(text, timestamptz, timestamptz) to authenticated, service_role;

-- Append-only, as content_deletion_log (23_neuron_delete_guard.sql) is.
create or replace function public.tg_stripe_event_actions_append_only()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception 'public.stripe_event_actions is append-only (% refused)', tg_op using errcode = 'insufficient_privilege';
end
$$;

comment on function public.tg_stripe_event_actions_append_only() is 'Refuses any change to the operators'' record.';
revoke all on function public.tg_stripe_event_actions_append_only() from public, anon, authenticated, service_role;

drop trigger if exists stripe_event_actions_append_only on public.stripe_event_actions;
create trigger stripe_event_actions_append_only
  before update or delete on public.stripe_event_actions
  for each row execute function public.tg_stripe_event_actions_append_only();
drop trigger if exists stripe_event_actions_no_truncate on public.stripe_event_actions;
create trigger stripe_event_actions_no_truncate
  before truncate on public.stripe_event_actions
  for each statement execute function public.tg_stripe_event_actions_append_only();

alter table public.stripe_event_actions enable row level security;
drop policy if exists stripe_event_actions_admin_read on public.stripe_event_actions;
create policy stripe_event_actions_admin_read on public.stripe_event_actions for select using ((select public.is_admin()));
revoke all on public.stripe_event_actions from public, anon, authenticated, service_role;
grant select on public.stripe_event_actions to authenticated, service_role;
revoke all on sequence public.stripe_event_actions_id_seq from public, anon, authenticated, service_role;

-- -----------------------------------------------------------------------------
-- Internal helpers (no grants: only the functions below reach them)
-- -----------------------------------------------------------------------------

-- Refuses a caller who is not an admin; names the operator for the record.
create or replace function public._operator(p_by text, p_what text)
returns text
language plpgsql
stable
set search_path = ''
as $$
begin
  if not public.is_admin() then
    raise exception 'only admins may %', p_what using errcode = 'insufficient_privilege';
  end if;
  return coalesce(nullif(btrim(p_by), ''), auth.jwt() ->> 'email', auth.uid()::text,
                  coalesce(nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text));
end
$$;

comment on function public._operator(text, text) is 'Internal: refuses non-admins; the operator''s name for the record.';
revoke all on function public._operator(text, text) from public, anon, authenticated, service_role;

create or replace function public._record_action(p_event_id text, p_action text, p_actor text, p_reason text, p_detail jsonb)
returns void
language sql
set search_path = ''
as $$
  insert into public.stripe_event_actions (event_id, action, actor, reason, detail)
  values (p_event_id, p_action, p_actor, p_reason, coalesce(p_detail, '{}'::jsonb))
$$;

comment on function public._record_action(text, text, text, text, jsonb) is 'Internal: appends one operator action.';
revoke all on function public._record_action(text, text, text, text, jsonb) from public, anon, authenticated, service_role;

-- =============================================================================
-- requeue_stripe_event: a dead event gets one more attempt now
-- Keeps the history; raises (and changes nothing) for an event that does not
-- exist or is not dead. Returns the attempt number the retry will be.
-- (18 had requeue_stripe_event(p_event_id); calls with one argument still work.)
-- SECURITY DEFINER so an admin JWT can run it without write grants; the
-- admin check is the gate.
-- =============================================================================
drop function if exists public.requeue_stripe_event(text);

create or replace function public.requeue_stripe_event(p_event_id text, p_by text default null)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_actor constant text := public._operator(p_by, 'requeue events');
  v_failure public.webhook_failures;
  v_status text;
begin
  select e.status into v_status from public.stripe_events e where e.id = p_event_id for update;
  if v_status is null then
    raise exception 'no stripe event %', p_event_id using errcode = 'P0002';
  end if;
  select * into v_failure from public.webhook_failures f where f.event_id = p_event_id;
  if v_status = 'error' and v_failure.next_retry is not null then
    raise exception 'event % is not dead (a retry is due %)', p_event_id, v_failure.next_retry
      using errcode = 'PT003', hint = 'aipt dlq retry (retry_stripe_event) runs a waiting retry now';
  end if;
  if v_status <> 'error' or v_failure.id is null then
    raise exception 'event % is not dead (status %)', p_event_id, v_status using errcode = 'PT003';
  end if;
  update public.webhook_failures f
     set max_retries = f.failure_count + 1, next_retry = now(), dead_at = null, permanent = false
   where f.event_id = p_event_id;
  perform public._record_action(p_event_id, 'requeue', v_actor, null,
                                jsonb_build_object('attempt', v_failure.failure_count + 1));
  return v_failure.failure_count + 1;
end;
$$;

comment on function public.requeue_stripe_event(text, text) is
  'Admin: makes a dead event due for one more attempt now (recorded); returns that attempt''s number.';
revoke all on function public.requeue_stripe_event(text, text) from public, anon, authenticated, service_role;
grant execute on function public.requeue_stripe_event(text, text) to authenticated, service_role;

-- =============================================================================
-- retry_stripe_event: a retrying event's next attempt runs now, not later
-- =============================================================================
create or replace function public.retry_stripe_event(p_event_id text, p_by text default null)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_actor constant text := public._operator(p_by, 'retry events');
  v_failure public.webhook_failures;
  v_status text;
begin
  select e.status into v_status from public.stripe_events e where e.id = p_event_id for update;
  if v_status is null then
    raise exception 'no stripe event %', p_event_id using errcode = 'P0002';
  end if;
  select * into v_failure from public.webhook_failures f where f.event_id = p_event_id;
  if v_status = 'error' and v_failure.next_retry is null then
    raise exception 'event % is not waiting for a retry (it is dead)', p_event_id
      using errcode = 'PT003', hint = 'aipt dlq requeue (requeue_stripe_event) gives a dead event one more attempt';
  end if;
  if v_status <> 'error' then
    raise exception 'event % is not waiting for a retry (status %)', p_event_id, v_status using errcode = 'PT003';
  end if;
  update public.webhook_failures f set next_retry = now() where f.event_id = p_event_id;
  perform public._record_action(p_event_id, 'retry', v_actor, null,
                                jsonb_build_object('attempt', v_failure.failure_count + 1, 'was_due', v_failure.next_retry));
  return v_failure.failure_count + 1;
end;
$$;

comment on function public.retry_stripe_event(text, text) is
  'Admin: runs a retrying event''s next attempt now instead of at next_retry (recorded); returns its number.';
revoke all on function public.retry_stripe_event(text, text) from public, anon, authenticated, service_role;
grant execute on function public.retry_stripe_event(text, text) to authenticated, service_role;

-- =============================================================================
-- discard_stripe_event: resolve an event without applying it
-- For an event that will never succeed (or should not): dead, retrying or
-- pending. It becomes skipped, discarded_at set, its failure resolved, so it
-- needs no attention any more; the reason is required. A failure whose event
-- row is gone (the deployed shop's) is resolved the same way.
-- =============================================================================
create or replace function public.discard_stripe_event(p_event_id text, p_reason text, p_by text default null)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_actor constant text := public._operator(p_by, 'discard events');
  v_status text;
  v_failure public.webhook_failures;
begin
  if nullif(btrim(p_reason), '') is null then
    raise exception 'a reason is required to discard an event' using errcode = 'invalid_parameter_value';
  end if;
  select e.status into v_status from public.stripe_events e where e.id = p_event_id for update;
  select * into v_failure from public.webhook_failures f where f.event_id = p_event_id for update;
  if v_status is null and v_failure.id is null then
    raise exception 'no stripe event %', p_event_id using errcode = 'P0002';
  end if;
  if v_status is not null and v_status not in ('error', 'pending') then
    raise exception 'event % is % already: nothing to discard', p_event_id, v_status using errcode = 'PT003';
  end if;
  if v_status is null and v_failure.resolved_at is not null then
    raise exception 'the failure of event % is resolved already', p_event_id using errcode = 'PT003';
  end if;
  update public.stripe_events e
     set status = 'skipped', processed_at = now(), discarded_at = now(),
         error = format('discarded by %s: %s', v_actor, p_reason)
   where e.id = p_event_id;
  update public.webhook_failures f set next_retry = null, resolved_at = now() where f.event_id = p_event_id;
  perform public._record_action(p_event_id, 'discard', v_actor, p_reason,
                                jsonb_build_object('was', coalesce(v_status, 'failure without an event')));
  return 'discarded';
end;
$$;

comment on function public.discard_stripe_event(text, text, text) is
  'Admin: resolves a dead, retrying or pending event without applying it (skipped, discarded_at; the reason recorded).';
revoke all on function public.discard_stripe_event(text, text, text) from public, anon, authenticated, service_role;
grant execute on function public.discard_stripe_event(text, text, text) to authenticated, service_role;

-- =============================================================================
-- replay_stripe_event: apply an applied (or skipped) event again
-- Makes it pending, so the worker applies it from its payload; the appliers
-- are idempotent (a purchase per payment intent, a subscription's newest
-- state), so a replay repairs what a hand edit broke and changes nothing else.
-- Returns the attempt number the replay will be, as requeue and retry do.
-- =============================================================================
create or replace function public.replay_stripe_event(p_event_id text, p_by text default null)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_actor constant text := public._operator(p_by, 'replay events');
  v_status text;
begin
  select e.status into v_status from public.stripe_events e where e.id = p_event_id for update;
  if v_status is null then
    raise exception 'no stripe event %', p_event_id using errcode = 'P0002';
  end if;
  if v_status not in ('ok', 'skipped') then
    raise exception 'event % is % : only an applied or skipped event is replayed', p_event_id, v_status
      using errcode = 'PT003',
            hint = 'aipt dlq requeue (dead) or aipt dlq retry (retrying) run a failed event';
  end if;
  update public.stripe_events e
     set status = 'pending', processed_at = null, error = null, discarded_at = null
   where e.id = p_event_id;
  perform public._record_action(p_event_id, 'replay', v_actor, null, jsonb_build_object('was', v_status));
  return coalesce((select f.failure_count from public.webhook_failures f where f.event_id = p_event_id), 0) + 1;
end;
$$;

comment on function public.replay_stripe_event(text, text) is
  'Admin: makes an applied or skipped event pending again so the worker applies it once more (idempotent; recorded); returns that attempt''s number.';
revoke all on function public.replay_stripe_event(text, text) from public, anon, authenticated, service_role;
grant execute on function public.replay_stripe_event(text, text) to authenticated, service_role;

-- =============================================================================
-- map_stripe_customer: the customer → user mapping, by hand
-- What a checkout naming both would have taught (user not known yet, PT001).
-- The user must exist; a customer mapped to another user is refused unless
-- p_replace. Recorded under the customer id.
-- =============================================================================
create or replace function public.map_stripe_customer(p_customer_id text, p_user_id uuid, p_replace boolean default false,
                                                      p_by text default null)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_actor constant text := public._operator(p_by, 'map customers');
  v_current uuid;
begin
  if p_customer_id !~ '^cus_[A-Za-z0-9]+$' then
    raise exception 'customer id % is not a Stripe customer id (cus_...)', p_customer_id using errcode = 'invalid_parameter_value';
  end if;
  if not exists (select 1 from auth.users u where u.id = p_user_id) then
    raise exception 'no user %', p_user_id using errcode = 'P0002';
  end if;
  select c.user_id into v_current from public.stripe_customers c where c.customer_id = p_customer_id for update;
  if v_current = p_user_id then
    return 'unchanged';
  end if;
  if v_current is not null and not p_replace then
    raise exception 'customer % is mapped to user % already', p_customer_id, v_current
      using errcode = 'unique_violation', hint = 'pass p_replace (aipt customers map --replace) to map it to another user';
  end if;
  insert into public.stripe_customers (customer_id, user_id) values (p_customer_id, p_user_id)
  on conflict (customer_id) do update set user_id = excluded.user_id;
  perform public._record_action(p_customer_id, 'map_customer', v_actor, null,
                                jsonb_build_object('user_id', p_user_id, 'was', v_current));
  return case when v_current is null then 'mapped' else 'replaced' end;
end;
$$;

comment on function public.map_stripe_customer(text, uuid, boolean, text) is
  'Admin: maps a Stripe customer to a user (the mapping a checkout would have taught); recorded.';
revoke all on function public.map_stripe_customer(text, uuid, boolean, text) from public, anon, authenticated, service_role;
grant execute on function public.map_stripe_customer(text, uuid, boolean, text) to authenticated, service_role;

-- =============================================================================
-- add_plan_price: a Stripe price gives a tier
-- On this project's plans, a row per price. On the deployed shop's plans (a
-- row per tier, with a monthly and a yearly price), the tier's row takes it in
-- stripe_price_id, when that is free. Refuses a price mapped already.
-- =============================================================================
create or replace function public.add_plan_price(p_price_id text, p_tier integer, p_name text default null,
                                                 p_by text default null)
returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_actor constant text := public._operator(p_by, 'add plan prices');
  v_plan uuid;
begin
  if p_price_id !~ '^(price|plan)_[A-Za-z0-9_]+$' then
    raise exception 'price id % is not a Stripe price id (price_...)', p_price_id using errcode = 'invalid_parameter_value';
  end if;
  if p_tier is null or p_tier < 0 then
    raise exception 'tier must be 0 or more' using errcode = 'invalid_parameter_value';
  end if;
  select p.plan_id into v_plan from public.stripe_plan_for_price(p_price_id) p;
  if v_plan is not null then
    raise exception 'price % is mapped already (plan %)', p_price_id, v_plan using errcode = 'unique_violation';
  end if;
  if exists (select 1 from pg_catalog.pg_attribute
             where attrelid = 'public.plans'::regclass and attname = 'code' and not attisdropped) then
    -- The deployed shop: tier is its plan's rank, a generated column.
    execute 'update public.plans p set stripe_price_id = $1 where p.tier = $2 and p.stripe_price_id is null returning p.id'
      into v_plan using p_price_id, p_tier;
    if v_plan is null then
      raise exception 'no plan of tier % without a price of its own', p_tier
        using errcode = 'P0002', hint = 'the deployed plans have a row per tier; each takes one price besides its monthly and yearly ones';
    end if;
  else
    insert into public.plans (name, tier, stripe_price_id)
    values (coalesce(nullif(btrim(p_name), ''), format('Tier %s (%s)', p_tier, p_price_id)), p_tier, p_price_id)
    returning id into v_plan;
  end if;
  perform public._record_action(p_price_id, 'add_plan_price', v_actor, null,
                                jsonb_build_object('plan_id', v_plan, 'tier', p_tier));
  return v_plan;
end;
$$;

comment on function public.add_plan_price(text, integer, text, text) is
  'Admin: maps a Stripe price to a plan of the given tier (a new plan row, or the deployed tier row); recorded.';
revoke all on function public.add_plan_price(text, integer, text, text) from public, anon, authenticated, service_role;
grant execute on function public.add_plan_price(text, integer, text, text) to authenticated, service_role;

-- =============================================================================
-- reprocess_stripe_event: run an event again from its stored payload, now
-- For psql and the deployed API: applies it in this session; a failure is
-- recorded (the event stays dead, with the new error in its history) instead
-- of raised. True when it applied the event now; false when it failed (see
-- webhook_failures) or was applied before (a notice says which). Recorded as
-- an operator's action. The first version (18) named its argument otherwise
-- and returned text, which CREATE OR REPLACE cannot change: dropped first.
-- =============================================================================
do $$
begin
  if (select prorettype from pg_catalog.pg_proc
      where oid = to_regprocedure('public.reprocess_stripe_event(text)')) = 'text'::regtype then
    drop function public.reprocess_stripe_event(text);
  end if;
end
$$;

create or replace function public.reprocess_stripe_event(p_id text)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_actor constant text := public._operator(null, 'reprocess events');
  v_event public.stripe_events;
  v_result text;
  v_message text;
  v_code text;
begin
  select * into v_event from public.stripe_events e where e.id = p_id;
  if v_event.id is null then
    raise exception 'no stripe event %', p_id using errcode = 'P0002';
  end if;
  begin
    v_result := public.apply_stripe_event(v_event.id, v_event.type, v_event.payload);
  exception when others then
    get stacked diagnostics v_message = message_text, v_code = returned_sqlstate;
    update public.webhook_failures f set max_retries = f.failure_count + 1 where f.event_id = p_id;
    perform public.record_stripe_event_failure(p_id, v_message, v_code, 1);
    perform public._record_action(p_id, 'reprocess', v_actor, null, jsonb_build_object('outcome', 'error', 'error', v_message));
    raise notice 'event % failed again: %', p_id, v_message;
    return false;
  end;
  perform public._record_action(p_id, 'reprocess', v_actor, null, jsonb_build_object('outcome', v_result));
  if v_result = 'duplicate' then
    raise notice 'event % was applied before: nothing to do', p_id;
    return false;
  end if;
  return true;
end;
$$;

comment on function public.reprocess_stripe_event(text) is
  'Admin: applies a stored event again now; true when it did, false (failure recorded) when it failed or was done. Recorded.';
revoke all on function public.reprocess_stripe_event(text) from public, anon, authenticated, service_role;
grant execute on function public.reprocess_stripe_event(text) to authenticated, service_role;

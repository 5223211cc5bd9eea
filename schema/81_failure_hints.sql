-- =============================================================================
-- Failure hints that name the fix
--
-- The two failures an operator fixes by hand say how, in the commands they
-- have: a customer nobody mapped (aipt customers map) and a price no plan
-- maps (aipt plans add), each then `aipt dlq requeue`. The hint is stored with
-- the error, so `aipt dlq list`, `aipt events show` and the alert carry it.
-- The functions are those of 45_stripe_events_v2.sql; only the hints changed.
-- =============================================================================

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

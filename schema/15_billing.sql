-- =============================================================================
-- Billing: what Stripe told us, in the shape the product needs
-- Every table is keyed on Stripe's own ids, so applying an event twice cannot
-- create a second row: idempotency is structural, not a check in code.
-- Only the worker (through consume_stripe_event) writes here.
-- =============================================================================

-- A Stripe price maps to an access tier.
create table if not exists public.plans (
  id uuid primary key default gen_random_uuid(),
  name text not null,
  tier integer not null check (tier >= 0),
  stripe_price_id text not null unique,
  created_at timestamptz not null default now()
);

-- Learned from checkout sessions (and any event carrying both ids), so later
-- subscription and invoice events, which name only the customer, find the user.
create table if not exists public.stripe_customers (
  customer_id text primary key,
  user_id uuid not null,
  created_at timestamptz not null default now()
);
create index if not exists stripe_customers_user_id_idx on public.stripe_customers (user_id);

-- One row per payment: a checkout session and its payment intent are one purchase.
create table if not exists public.user_purchases (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null,
  neuron_id uuid references public.neurons (id) on delete restrict,
  bundle_id uuid references public.bundles (id) on delete restrict,
  payment_intent_id text unique,
  checkout_session_id text unique,
  amount integer,            -- minor units
  currency text,
  created_at timestamptz not null default now(),
  constraint user_purchases_one_product check (num_nonnulls(neuron_id, bundle_id) = 1),
  constraint user_purchases_has_stripe_id check (num_nonnulls(payment_intent_id, checkout_session_id) >= 1)
);
create index if not exists user_purchases_user_id_idx on public.user_purchases (user_id);
create index if not exists user_purchases_neuron_id_idx on public.user_purchases (neuron_id) where neuron_id is not null;
create index if not exists user_purchases_bundle_id_idx on public.user_purchases (bundle_id) where bundle_id is not null;

-- One row per Stripe subscription. last_event_created / last_event_rank order
-- events (Stripe delivers out of order, several in one second); ended_at makes
-- deletion terminal.
create table if not exists public.user_subscriptions (
  stripe_subscription_id text primary key,
  user_id uuid not null,
  customer_id text,
  plan_id uuid references public.plans (id),
  plan_tier integer not null default 0,
  status text not null,
  expires_at timestamptz,
  cancel_at_period_end boolean not null default false,
  last_event_created bigint not null,
  last_event_rank smallint not null default 0,
  ended_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists user_subscriptions_user_id_idx on public.user_subscriptions (user_id);

create table if not exists public.invoices (
  id text primary key,
  subscription_id text,
  customer_id text,
  payment_intent_id text,
  status text,
  amount_due integer,
  amount_paid integer,
  currency text,
  attempt_count integer not null default 0,
  last_event_created bigint not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists invoices_subscription_id_idx on public.invoices (subscription_id);

-- -----------------------------------------------------------------------------
-- The access rule: an active, unexpired subscription opens content up to its tier.
-- -----------------------------------------------------------------------------
create or replace function public.user_access_tier(p_user_id uuid)
returns integer
language sql
stable
set search_path = ''
as $$
  select max(s.plan_tier)
  from public.user_subscriptions s
  where s.user_id = p_user_id
    and s.status in ('active', 'trialing')
    and s.ended_at is null
    and (s.expires_at is null or s.expires_at > now())
$$;

comment on function public.user_access_tier(uuid) is
  'Highest tier an active, unexpired subscription gives this user; NULL when none.';

revoke all on function public.user_access_tier(uuid) from public;
grant execute on function public.user_access_tier(uuid) to service_role;

-- -----------------------------------------------------------------------------
-- Row-level security: admins read everything, a user reads their own purchases
-- and subscriptions, nobody but the worker (owner) and service_role writes.
-- -----------------------------------------------------------------------------
alter table public.plans enable row level security;
alter table public.stripe_customers enable row level security;
alter table public.user_purchases enable row level security;
alter table public.user_subscriptions enable row level security;
alter table public.invoices enable row level security;

drop policy if exists plans_read on public.plans;
create policy plans_read on public.plans for select using (true);

drop policy if exists stripe_customers_admin_read on public.stripe_customers;
create policy stripe_customers_admin_read on public.stripe_customers for select using (public.is_admin());

drop policy if exists user_purchases_read on public.user_purchases;
create policy user_purchases_read on public.user_purchases for select
  using (user_id = (select auth.uid()) or public.is_admin());

drop policy if exists user_subscriptions_read on public.user_subscriptions;
create policy user_subscriptions_read on public.user_subscriptions for select
  using (user_id = (select auth.uid()) or public.is_admin());

drop policy if exists invoices_admin_read on public.invoices;
create policy invoices_admin_read on public.invoices for select using (public.is_admin());

revoke all on public.plans, public.stripe_customers, public.user_purchases, public.user_subscriptions, public.invoices
  from public, anon, authenticated;
grant select on public.plans to anon, authenticated;
grant select on public.stripe_customers, public.user_purchases, public.user_subscriptions, public.invoices to authenticated;
grant all on public.plans, public.stripe_customers, public.user_purchases, public.user_subscriptions, public.invoices
  to service_role;

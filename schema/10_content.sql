-- =============================================================================
-- Content: neurons (prompt templates), bundles, and which neurons a bundle holds
-- Created only if absent: deployed databases already have these tables, and
-- their data stays. Soft delete, guards and the live-row policies come in
-- 23_neuron_delete_guard.sql.
-- =============================================================================

create table if not exists public.neurons (
  id uuid primary key default gen_random_uuid(),
  slug text not null,
  title text not null,
  summary text,
  body text,
  published boolean not null default false,
  required_tier integer not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table if not exists public.bundles (
  id uuid primary key default gen_random_uuid(),
  slug text not null,
  title text not null,
  description text,
  required_tier integer not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table if not exists public.bundle_neurons (
  bundle_id uuid not null references public.bundles (id) on delete cascade,
  neuron_id uuid not null references public.neurons (id) on delete cascade,
  created_at timestamptz not null default now(),
  primary key (bundle_id, neuron_id)
);

-- The primary key serves lookups by bundle; this one serves "which bundles hold this neuron".
create index if not exists bundle_neurons_neuron_id_idx on public.bundle_neurons (neuron_id);

-- -----------------------------------------------------------------------------
-- Row-level security: everyone reads content; only admins write it.
-- 23_neuron_delete_guard.sql narrows reading to live rows.
-- -----------------------------------------------------------------------------
alter table public.neurons enable row level security;
alter table public.bundles enable row level security;
alter table public.bundle_neurons enable row level security;

drop policy if exists neurons_read on public.neurons;
create policy neurons_read on public.neurons for select using (true);
drop policy if exists neurons_admin_write on public.neurons;
create policy neurons_admin_write on public.neurons for all using (public.is_admin()) with check (public.is_admin());

drop policy if exists bundles_read on public.bundles;
create policy bundles_read on public.bundles for select using (true);
drop policy if exists bundles_admin_write on public.bundles;
create policy bundles_admin_write on public.bundles for all using (public.is_admin()) with check (public.is_admin());

drop policy if exists bundle_neurons_read on public.bundle_neurons;
create policy bundle_neurons_read on public.bundle_neurons for select using (true);
drop policy if exists bundle_neurons_admin_write on public.bundle_neurons;
create policy bundle_neurons_admin_write on public.bundle_neurons for all using (public.is_admin()) with check (public.is_admin());

revoke all on public.neurons, public.bundles, public.bundle_neurons from public, anon, authenticated;
grant select on public.neurons, public.bundles, public.bundle_neurons to anon, authenticated;
grant insert, update, delete on public.neurons, public.bundles, public.bundle_neurons to authenticated;
grant all on public.neurons, public.bundles, public.bundle_neurons to service_role;

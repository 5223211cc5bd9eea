-- =============================================================================
-- Privileges that do not depend on the database's defaults
--
-- On Supabase, every table, view, sequence and function the postgres role
-- creates in public is granted ALL to anon, authenticated and service_role by
-- default; on plain PostgreSQL, functions are executable by PUBLIC. The files
-- since 35 state every grant of what they create. This one states them for
-- what the earlier files left to the defaults, and closes what the deployed
-- shop's defaults opened, so that anon and authenticated hold the same
-- privileges on both: exactly the ones written here and in those files.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Functions of 15, 18 and 23 whose grants named fewer roles than they exist
-- (46_retention_v2.sql restates those of 30).
-- -----------------------------------------------------------------------------
revoke all on function public.user_access_tier(uuid) from public, anon, authenticated, service_role;
grant execute on function public.user_access_tier(uuid) to service_role;

revoke all on function public.stripe_apply_invoice(jsonb, bigint) from public, anon, authenticated, service_role;

revoke all on function public.stripe_error_is_permanent(text) from public, anon, authenticated, service_role;
grant execute on function public.stripe_error_is_permanent(text) to service_role;

revoke all on function public.claim_dead_alert(text) from public, anon, authenticated, service_role;
grant execute on function public.claim_dead_alert(text) to service_role;

revoke all on function
  public.f_can_delete_neuron(uuid), public.f_can_delete_bundle(uuid),
  public.f_soft_delete_neuron(uuid, text), public.f_soft_delete_bundle(uuid, text),
  public.f_restore_neuron(uuid), public.f_restore_bundle(uuid),
  public.f_hard_delete_neuron(uuid), public.f_hard_delete_bundle(uuid),
  public.f_cleanup_old_deleted_data()
  from public, anon, authenticated, service_role;
-- Each checks is_admin() itself: a signed-in admin (JWT or user_roles) uses them through the API.
grant execute on function
  public.f_can_delete_neuron(uuid), public.f_can_delete_bundle(uuid),
  public.f_soft_delete_neuron(uuid, text), public.f_soft_delete_bundle(uuid, text),
  public.f_restore_neuron(uuid), public.f_restore_bundle(uuid),
  public.f_hard_delete_neuron(uuid), public.f_hard_delete_bundle(uuid),
  public.f_cleanup_old_deleted_data()
  to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- Tables of 23, 26 and 30: the same grants, service_role's stated too (no
-- TRUNCATE for anyone but the owner).
-- -----------------------------------------------------------------------------
revoke all on public.content_deletion_log, public.cleanup_runs, public.rate_limit_config,
  public.rate_limit_buckets, public.rate_limit_log from public, anon, authenticated, service_role;
grant select on public.content_deletion_log, public.cleanup_runs, public.rate_limit_buckets, public.rate_limit_log
  to authenticated, service_role;
grant select on public.rate_limit_config to anon, authenticated;
grant insert, update, delete on public.rate_limit_config to authenticated;
grant select, insert, update, delete on public.cleanup_runs, public.rate_limit_config, public.rate_limit_buckets,
  public.rate_limit_log to service_role;

-- The migration ledger, where aipt migrate keeps one: nobody's but the owner's.
do $$
begin
  if to_regclass('public.schema_migrations') is not null then
    revoke all on public.schema_migrations from public, anon, authenticated, service_role;
  end if;
end
$$;

-- -----------------------------------------------------------------------------
-- Sequences (the identity columns of content_deletion_log and cleanup_runs):
-- only the owner draws from them; the API roles may not read or set them.
-- -----------------------------------------------------------------------------
do $$
declare
  s record;
begin
  for s in select c.oid::regclass as seq from pg_catalog.pg_class c
           where c.relnamespace = 'public'::regnamespace and c.relkind = 'S' loop
    execute format('revoke all on sequence %s from public, anon, authenticated, service_role', s.seq);
  end loop;
end
$$;

-- -----------------------------------------------------------------------------
-- The deployed shop's other public views (its library tree and plans):
-- read-only, as they were meant. A view over one table is updatable, and the
-- deployed grants let anon change the tables through them.
-- -----------------------------------------------------------------------------
do $$
declare
  v text;
begin
  foreach v in array array['public.v_tree_public', 'public.v_plans_public'] loop
    if to_regclass(v) is not null then
      execute format('revoke all on %s from public, anon, authenticated, service_role', v);
      execute format('grant select on %s to anon, authenticated, service_role', v);
    end if;
  end loop;
end
$$;

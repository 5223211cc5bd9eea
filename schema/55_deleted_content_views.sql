-- =============================================================================
-- Deleted content, for admins, second version: the deployed columns
--
-- The deployed views (the shop's 23_neuron_delete_guard.sql) showed who
-- deleted a row by e-mail and how many live links it kept; the first version
-- of this project's showed the deleter's id, the tier and from when a hard
-- delete is possible. Both sets are here, the deployed ones first, in their
-- order and types (e-mails as auth.users.email is on Supabase, varchar(255)).
-- security_invoker: the caller's row-level security applies,
-- and the is_admin() filter says so outright; e-mails come through
-- public.admin_user_email().
-- =============================================================================

drop view if exists public.v_neurons_deleted;
create view public.v_neurons_deleted with (security_invoker = true) as
select
  n.id,
  n.slug,
  n.title,
  n.summary,
  n.deleted_at,
  public.admin_user_email(n.deleted_by)::character varying(255) as deleted_by_email,
  n.deletion_reason,
  (select count(*) from public.bundle_neurons bn where bn.neuron_id = n.id and bn.deleted_at is null) as active_bundle_refs,
  n.required_tier,
  n.deleted_by,
  n.deleted_at + interval '90 days' as hard_delete_from
from public.neurons n
where n.deleted_at is not null
  and (select public.is_admin())
order by n.deleted_at desc;

comment on view public.v_neurons_deleted is
  'Admin: soft-deleted neurons, who deleted them and why, and from when they can be hard-deleted.';

drop view if exists public.v_bundles_deleted;
create view public.v_bundles_deleted with (security_invoker = true) as
select
  b.id,
  b.slug,
  b.title,
  b.description,
  b.deleted_at,
  public.admin_user_email(b.deleted_by)::character varying(255) as deleted_by_email,
  b.deletion_reason,
  (select count(*) from public.bundle_neurons bn where bn.bundle_id = b.id and bn.deleted_at is null) as active_neuron_refs,
  b.required_tier,
  b.deleted_by,
  b.deleted_at + interval '90 days' as hard_delete_from,
  (select count(*) from public.bundle_neurons bn where bn.bundle_id = b.id)::integer as neuron_links
from public.bundles b
where b.deleted_at is not null
  and (select public.is_admin())
order by b.deleted_at desc;

comment on view public.v_bundles_deleted is
  'Admin: soft-deleted bundles, who deleted them and why, their links, and from when they can be hard-deleted.';

revoke all on public.v_neurons_deleted, public.v_bundles_deleted from public, anon, authenticated, service_role;
grant select on public.v_neurons_deleted, public.v_bundles_deleted to authenticated, service_role;

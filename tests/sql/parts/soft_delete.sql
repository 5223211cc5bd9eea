-- =============================================================================
-- Soft delete and delete guards (schema/23_neuron_delete_guard.sql)
--
-- Included by ../test-production-infrastructure.sql, inside its transaction,
-- with its helpers pg_temp.expect, pg_temp.expect_error and pg_temp.act_as.
-- Its content is created here under fresh ids and slugs, at tiers above every
-- existing subscription (real subscriptions reach none of it), and goes with
-- the final rollback. It does not run f_cleanup_old_deleted_data(): on a real
-- database that would work through real rows.
-- =============================================================================

\echo soft delete: schema

do $$
declare
  f text;
begin
  foreach f in array array[
    'f_can_delete_neuron(uuid)', 'f_can_delete_bundle(uuid)',
    'f_soft_delete_neuron(uuid,text)', 'f_soft_delete_bundle(uuid,text)',
    'f_restore_neuron(uuid)', 'f_restore_bundle(uuid)',
    'f_hard_delete_neuron(uuid)', 'f_hard_delete_bundle(uuid)',
    'f_cleanup_old_deleted_data()']
  loop
    perform pg_temp.expect(to_regprocedure('public.' || f) is not null, f || ' exists');
    perform pg_temp.expect(
      (select p.prosecdef and p.proconfig = array['search_path=""']
       from pg_catalog.pg_proc p where p.oid = to_regprocedure('public.' || f)),
      f || ' is security definer with an empty search_path');
    perform pg_temp.expect(not has_function_privilege('anon', 'public.' || f, 'execute'), 'anon cannot execute ' || f);
    perform pg_temp.expect(not has_function_privilege('public', 'public.' || f, 'execute'), 'public cannot execute ' || f);
    perform pg_temp.expect(has_function_privilege('authenticated', 'public.' || f, 'execute'), 'authenticated may execute ' || f);
    perform pg_temp.expect(has_function_privilege('service_role', 'public.' || f, 'execute'), 'service_role may execute ' || f);
  end loop;

  perform pg_temp.expect(
    (select count(*) from information_schema.columns
     where table_schema = 'public' and table_name in ('neurons', 'bundles')
       and column_name in ('deleted_at', 'deleted_by', 'deletion_reason')) = 6,
    'neurons and bundles have deleted_at, deleted_by and deletion_reason');
  perform pg_temp.expect(
    exists (select 1 from information_schema.columns
            where table_schema = 'public' and table_name = 'bundle_neurons' and column_name = 'deleted_at'),
    'bundle_neurons has deleted_at');
  perform pg_temp.expect(
    (select count(*) from pg_catalog.pg_indexes
     where schemaname = 'public' and tablename in ('neurons', 'bundles')
       and indexdef like 'CREATE UNIQUE INDEX % (slug) WHERE (deleted_at IS NULL)') = 2,
    'slugs are unique among live rows only');
  perform pg_temp.expect(
    (select count(*) from pg_catalog.pg_class c
     where c.oid in ('public.v_neurons_deleted'::regclass, 'public.v_bundles_deleted'::regclass)
       and c.reloptions @> array['security_invoker=true']) = 2,
    'the deleted views run with the caller''s rights');
  perform pg_temp.expect(
    (select array_agg(column_name::text order by ordinal_position) from information_schema.columns
      where table_schema = 'public' and table_name = 'v_neurons_deleted')
      @> array['id', 'slug', 'title', 'summary', 'deleted_at', 'deleted_by_email', 'deletion_reason', 'active_bundle_refs'],
    'v_neurons_deleted has the deployed columns');
  perform pg_temp.expect(
    not has_function_privilege('anon', 'public.admin_user_email(uuid)', 'execute'),
    'anon cannot ask for e-mails');
  perform pg_temp.expect(
    (select c.relrowsecurity from pg_catalog.pg_class c where c.oid = 'public.content_deletion_log'::regclass),
    'the audit trail has row-level security');
end
$$;

\echo soft delete: guards

create temp table soft_delete_ids (name text primary key, id uuid not null default gen_random_uuid()) on commit drop;
grant select on soft_delete_ids to anon, authenticated, service_role;
insert into soft_delete_ids (name)
values ('admin'), ('member'),
       ('free'), ('held'), ('bought'), ('reached'), ('kept'), ('dropped'),
       ('live_bundle'), ('x'), ('bought_bundle');

create function pg_temp.sd(p_name text)
returns uuid
language sql
stable
as $$
  select id from pg_temp.soft_delete_ids where name = p_name
$$;

do $$
declare
  v_tier integer := (select coalesce(max(s.plan_tier), 0) + 100 from public.user_subscriptions s);
  v_tag text := substr(md5(random()::text), 1, 10);
begin
  -- 'reached' sits at v_tier, which the subscription below reaches; everything else sits above it.
  insert into public.neurons (id, slug, title, required_tier, published)
  select pg_temp.sd(k), 'sd-' || v_tag || '-' || k, 'Soft delete check: ' || k,
         case when k = 'reached' then v_tier else v_tier + 1 end, true
  from unnest(array['free', 'held', 'bought', 'reached', 'kept', 'dropped']) k;
  insert into public.bundles (id, slug, title, required_tier)
  select pg_temp.sd(k), 'sd-' || v_tag || '-' || k, 'Soft delete check: ' || k, v_tier + 1
  from unnest(array['live_bundle', 'x', 'bought_bundle']) k;
  insert into public.bundle_neurons (bundle_id, neuron_id)
  values (pg_temp.sd('live_bundle'), pg_temp.sd('held')),
         (pg_temp.sd('x'), pg_temp.sd('kept')),
         (pg_temp.sd('x'), pg_temp.sd('dropped'));
  insert into public.user_purchases (user_id, neuron_id, bundle_id, payment_intent_id)
  values (pg_temp.sd('member'), pg_temp.sd('bought'), null, 'pi_sd_' || v_tag || '_n'),
         (pg_temp.sd('member'), null, pg_temp.sd('bought_bundle'), 'pi_sd_' || v_tag || '_b');
  insert into public.user_subscriptions
    (stripe_subscription_id, user_id, plan_tier, status, expires_at, last_event_created)
  values ('sub_sd_' || v_tag, pg_temp.sd('member'), v_tier, 'active', now() + interval '1 month', 0);
end
$$;

select pg_temp.act_as('authenticated', pg_temp.sd('admin'), true);

do $$
declare
  r record;
begin
  select * into r from public.f_can_delete_neuron(pg_temp.sd('free'));
  perform pg_temp.expect(r.can_delete and r.active_bundles = '{}' and r.active_subscriptions = 0,
    'a neuron nothing depends on can be deleted (' || r.reason || ')');
  select * into r from public.f_can_delete_neuron(pg_temp.sd('held'));
  perform pg_temp.expect(not r.can_delete and cardinality(r.active_bundles) = 1 and r.reason like '%live bundle%',
    'a neuron in a live bundle is guarded (' || r.reason || ')');
  select * into r from public.f_can_delete_neuron(pg_temp.sd('bought'));
  perform pg_temp.expect(not r.can_delete and r.reason like '%bought%', 'a bought neuron is guarded (' || r.reason || ')');
  select * into r from public.f_can_delete_neuron(pg_temp.sd('reached'));
  perform pg_temp.expect(not r.can_delete and r.active_subscriptions = 1,
    'a neuron an active subscription reaches is guarded (' || r.reason || ')');
  select * into r from public.f_can_delete_bundle(pg_temp.sd('bought_bundle'));
  perform pg_temp.expect(not r.can_delete and r.reason like '%bought%', 'a bought bundle is guarded (' || r.reason || ')');
  select * into r from public.f_can_delete_bundle(pg_temp.sd('x'));
  perform pg_temp.expect(r.can_delete, 'a bundle nothing depends on can be deleted (' || r.reason || ')');
  select * into r from public.f_can_delete_neuron(gen_random_uuid());
  perform pg_temp.expect(not r.can_delete and r.reason = 'neuron not found', 'an unknown id gets a reason, not an error');
end
$$;

\echo soft delete: only admins

select pg_temp.act_as('authenticated', pg_temp.sd('member'));

do $$
declare
  call text;
begin
  foreach call in array array[
    format('select * from public.f_can_delete_neuron(%L)', pg_temp.sd('free')),
    format('select public.f_soft_delete_neuron(%L)', pg_temp.sd('free')),
    format('select public.f_soft_delete_bundle(%L)', pg_temp.sd('x')),
    format('select public.f_restore_neuron(%L)', pg_temp.sd('free')),
    format('select public.f_hard_delete_bundle(%L)', pg_temp.sd('x')),
    'select * from public.f_cleanup_old_deleted_data()']
  loop
    perform pg_temp.expect_error(call, '42501', 'a signed-in user is refused: ' || call);
  end loop;
end
$$;

select pg_temp.act_as('anon');

do $$
begin
  perform pg_temp.expect_error(format('select public.f_soft_delete_neuron(%L)', pg_temp.sd('free')), '42501',
    'anon cannot soft delete');
  perform pg_temp.expect_error(format('select * from public.f_can_delete_neuron(%L)', pg_temp.sd('free')), '42501',
    'anon cannot run the guard');
end
$$;

\echo soft delete: cascade and exact restore

select pg_temp.act_as('authenticated', pg_temp.sd('admin'), true);

do $$
begin
  perform pg_temp.expect(public.f_soft_delete_bundle(pg_temp.sd('x'), 'sql check'), 'an admin soft-deletes a bundle');
  perform pg_temp.expect(
    not exists (select 1 from public.bundle_neurons where bundle_id = pg_temp.sd('x') and deleted_at is null),
    'the bundle''s links go down with it');
  -- With x gone, 'dropped' is in no live bundle: deleted separately.
  perform pg_temp.expect(public.f_soft_delete_neuron(pg_temp.sd('dropped'), 'sql check'), 'an admin soft-deletes a neuron');
  perform pg_temp.expect(not public.f_soft_delete_neuron(pg_temp.sd('dropped')), 'a second soft delete returns false');
  perform pg_temp.expect(public.f_restore_bundle(pg_temp.sd('x')), 'an admin restores the bundle');
  perform pg_temp.expect(
    (select array_agg(neuron_id) from public.bundle_neurons where bundle_id = pg_temp.sd('x') and deleted_at is null)
      = array[pg_temp.sd('kept')],
    'the restore brings back only what that delete took down');
  perform pg_temp.expect_error(format('select public.f_soft_delete_neuron(%L)', pg_temp.sd('held')), '55006',
    'the guard refuses to soft delete a neuron in a live bundle');
  perform pg_temp.expect(
    (select array_agg(action order by id) from public.content_deletion_log where content_id = pg_temp.sd('x'))
      = array['soft_delete', 'restore'],
    'the trail records the delete and the restore');
end
$$;

\echo soft delete: nobody else sees deleted rows

select pg_temp.act_as('authenticated', pg_temp.sd('member'));

do $$
begin
  perform pg_temp.expect(not exists (select 1 from public.neurons), 'a user reads no neuron row (they carry the body)');
  perform pg_temp.expect(exists (select 1 from public.v_neuron_public where id = pg_temp.sd('kept')), 'a user sees live neurons');
  perform pg_temp.expect(not exists (select 1 from public.v_neuron_public where id = pg_temp.sd('dropped')),
    'a user does not see a deleted neuron');
  perform pg_temp.expect(not exists (select 1 from public.bundle_neurons where neuron_id = pg_temp.sd('dropped')),
    'a user does not see the links of a deleted neuron');
  perform pg_temp.expect(not exists (select 1 from public.v_neurons_deleted), 'v_neurons_deleted shows a user nothing');
  perform pg_temp.expect(not exists (select 1 from public.v_bundles_deleted), 'v_bundles_deleted shows a user nothing');
  perform pg_temp.expect(not exists (select 1 from public.content_deletion_log), 'the trail shows a user nothing');
end
$$;

select pg_temp.act_as('anon');

do $$
begin
  perform pg_temp.expect_error('select 1 from public.neurons', '42501', 'anon cannot read the neurons table');
  perform pg_temp.expect(exists (select 1 from public.v_neuron_public where id = pg_temp.sd('kept')),
    'anon sees live neurons in the public catalogue');
  perform pg_temp.expect(not exists (select 1 from public.v_neuron_public where id = pg_temp.sd('dropped')),
    'anon does not see a deleted neuron');
  perform pg_temp.expect_error('select * from public.v_neurons_deleted', '42501', 'anon cannot read v_neurons_deleted');
  perform pg_temp.expect_error('select * from public.content_deletion_log', '42501', 'anon cannot read the trail');
end
$$;

\echo soft delete: hard delete after 90 days

select pg_temp.act_as('authenticated', pg_temp.sd('admin'), true);

do $$
begin
  perform pg_temp.expect_error(format('select public.f_hard_delete_neuron(%L)', pg_temp.sd('free')), '55000',
    'hard delete without a soft delete is refused');
  perform pg_temp.expect_error(format('select public.f_hard_delete_neuron(%L)', pg_temp.sd('dropped')), '55000',
    'hard delete within 90 days of the soft delete is refused');
end
$$;

-- Backdate the soft delete, as the table owner (the only one allowed to write deleted_at directly).
select pg_temp.act_as(null);
update public.neurons set deleted_at = deleted_at - interval '91 days' where id = pg_temp.sd('dropped');

select pg_temp.act_as('service_role');

do $$
begin
  -- x came back after 'dropped' was deleted: restoring 'dropped' would put it back there.
  perform pg_temp.expect_error(format('select public.f_hard_delete_neuron(%L)', pg_temp.sd('dropped')), '55006',
    'hard delete of a neuron a live bundle still holds is refused');
  perform pg_temp.expect(public.f_soft_delete_bundle(pg_temp.sd('x'), 'sql check'), 'service_role soft-deletes a bundle');
  perform pg_temp.expect(public.f_hard_delete_neuron(pg_temp.sd('dropped')), 'hard delete 91 days after the soft delete');
  perform pg_temp.expect(not exists (select 1 from public.neurons where id = pg_temp.sd('dropped')), 'the neuron is gone');
  perform pg_temp.expect(not exists (select 1 from public.bundle_neurons where neuron_id = pg_temp.sd('dropped')),
    'its links are gone');
  perform pg_temp.expect(
    (select array_agg(action order by id) from public.content_deletion_log where content_id = pg_temp.sd('dropped'))
      = array['soft_delete', 'hard_delete'],
    'the trail outlives the hard delete');
end
$$;

select pg_temp.act_as(null);

do $$
begin
  perform pg_temp.expect_error(
    format('update public.content_deletion_log set reason = null where content_id = %L', pg_temp.sd('dropped')),
    '42501', 'the trail is append-only, even for the owner');
end
$$;

\echo soft delete: ok

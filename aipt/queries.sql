-- insert_event --
-- Store an accepted webhook, pending ($7 null) or skipped with the reason $7 (a mode not accepted); no row
-- back means Stripe redelivered one we have.
insert into public.stripe_events (id, type, api_version, created, livemode, payload, status, error, processed_at)
values ($1, $2, $3, $4, $5, $6::jsonb, case when $7::text is null then 'pending' else 'skipped' end, $7,
        case when $7::text is not null then now() end)
on conflict (id) do nothing
returning id

-- consume_due_event --
-- Apply the event if it is due (pending, or a retry whose time has come); no row when it is not. $2 / $3: why
-- a live / test event is not applied (a mode the service does not accept), null when it is: then it is skipped.
select e.type as event_type, coalesce(f.failure_count, 0) + 1 as attempt,
       case when (case when e.livemode then $2::text else $3::text end) is null
            then public.apply_stripe_event(p_id => e.id, p_type => e.type, p_payload => e.payload)
            else public.skip_stripe_event(p_id => e.id, p_reason => case when e.livemode then $2::text else $3::text end)
       end as outcome
from public.stripe_events e
left join public.webhook_failures f on f.event_id = e.id
where e.id = $1
  and (e.status = 'pending' or (e.status = 'error' and f.next_retry <= now()))

-- fail_event --
-- Record a failed attempt (the SQLSTATE decides whether it is permanent) and, for a death, claim its alert:
-- event_type, attempt (null: applied meanwhile), next_retry, dead, alert (announce it: once per death),
-- dead_count. Raises P0002 for an event that does not exist.
select event_type, attempt, next_retry, dead, alert, dead_count
from public.fail_stripe_event(
  p_event_id => $1, p_error => $2, p_error_code => $3,
  p_max_attempts => $4, p_base_seconds => $5, p_factor => $6, p_cap_seconds => $7)

-- due_events --
-- What the sweeper enqueues: pending rows older than the grace period, and retries now due.
(select e.id as event_id, 1 as attempt
   from public.stripe_events e
  where e.status = 'pending' and e.received_at < now() - make_interval(secs => $1)
  order by e.received_at
  limit $2)
union all
(select f.event_id, f.failure_count + 1 as attempt
   from public.webhook_failures f
  where f.next_retry <= now()
  order by f.next_retry
  limit $2)

-- ping --
-- Readiness: the database answers.
select 1

-- list_events --
-- Events for operators, newest first, each with what it is now (stripe_event_state). Every filter is
-- optional (null): $1 state, $2 type, $3 / $4 received at or after / before, $5 customer, $6 user (the
-- customer mapped to them, or the object naming them), $7 a Stripe object id the event's object is or
-- names; $8 / $9 the cursor (the last row seen: its received_at and id); $10 how many.
select e.id as event_id, e.type as event_type, s.state as status, coalesce(f.failure_count, 0) as attempts,
       e.received_at, now() - e.received_at as age, f.next_retry,
       case when s.state in ('retrying', 'dead', 'discarded') then coalesce(e.error, f.error_message) end as last_error,
       o.object ->> 'customer' as customer, o.object ->> 'id' as object_id
from public.stripe_events e
left join public.webhook_failures f on f.event_id = e.id
cross join lateral (select e.payload -> 'data' -> 'object' as object) o
cross join lateral (select public.stripe_event_state(e.status, f.next_retry, e.discarded_at) as state) s
where ($1::text is null or s.state = $1)
  and ($2::text is null or e.type = $2)
  and ($3::timestamptz is null or e.received_at >= $3)
  and ($4::timestamptz is null or e.received_at < $4)
  and ($5::text is null or o.object ->> 'customer' = $5)
  and ($6::uuid is null
       or o.object ->> 'customer' in (select c.customer_id from public.stripe_customers c where c.user_id = $6::uuid)
       or $6::text in (o.object ->> 'client_reference_id', o.object -> 'metadata' ->> 'user_id',
                       o.object -> 'metadata' ->> 'userId', o.object -> 'metadata' ->> 'uid'))
  and ($7::text is null
       or $7::text in (o.object ->> 'id', o.object ->> 'payment_intent', o.object ->> 'subscription',
                       o.object ->> 'invoice', o.object ->> 'charge', o.object ->> 'latest_invoice'))
  and ($8::timestamptz is null or (e.received_at, e.id) < ($8::timestamptz, $9::text))
order by e.received_at desc, e.id desc
limit $10

-- show_event --
-- One event (or a failure whose event row is gone) with its state, payload, failed attempts and what
-- operators did to it.
select k.id as event_id, coalesce(e.type, f.event_type) as event_type,
       case when e.id is null then case when f.resolved_at is null then 'dead' else 'discarded' end || ' (event row gone)'
            else public.stripe_event_state(e.status, f.next_retry, e.discarded_at) end as status,
       e.api_version, e.created, e.livemode, e.received_at, e.processed_at, e.discarded_at, e.error,
       f.failure_count, f.max_retries, f.next_retry, f.dead_at, f.alerted_at, f.resolved_at, f.permanent,
       f.error_message, e.payload, f.history,
       (select coalesce(jsonb_agg(jsonb_build_object('at', a.occurred_at, 'action', a.action, 'by', a.actor,
                                                     'reason', a.reason, 'detail', a.detail) order by a.id), '[]')
          from public.stripe_event_actions a where a.event_id = k.id) as actions
from (select $1::text as id) k
left join public.stripe_events e on e.id = k.id
left join public.webhook_failures f on f.event_id = k.id
where e.id is not null or f.id is not null

-- list_dead --
-- The dead-letter queue: failed events with no automatic attempt left, oldest death first; dead_for counts
-- from the death. $1 type, $2 died at or after, $3 how many.
select f.event_id, f.event_type, f.failure_count as attempts, f.error_message as last_error,
       f.permanent, f.dead_at, now() - f.dead_at as dead_for
from public.webhook_failures f
where f.dead_at is not null and f.resolved_at is null and f.next_retry is null
  and ($1::text is null or f.event_type = $1)
  and ($2::timestamptz is null or f.dead_at >= $2)
order by f.dead_at
limit $3

-- list_retrying --
-- Events waiting in backoff for their next attempt, soonest first. $1 type, $2 failed first at or after,
-- $3 how many.
select f.event_id, f.event_type, f.failure_count as attempts, f.error_message as last_error, f.next_retry
from public.webhook_failures f
where f.next_retry is not null
  and ($1::text is null or f.event_type = $1)
  and ($2::timestamptz is null or f.first_failure >= $2)
order by f.next_retry
limit $3

-- requeue_event --
-- Give a dead event one more attempt now, recorded as done by $2; returns that attempt's number.
select public.requeue_stripe_event(p_event_id => $1, p_by => $2)

-- retry_event --
-- Run a retrying event's next attempt now instead of later, recorded as done by $2; returns its number.
select public.retry_stripe_event(p_event_id => $1, p_by => $2)

-- replay_event --
-- Make an applied or skipped event pending again (recorded as done by $2); the worker applies it once more.
-- Returns the attempt number the replay will be.
select public.replay_stripe_event(p_event_id => $1, p_by => $2)

-- discard_event --
-- Resolve an event without applying it, for the reason $2, recorded as done by $3.
select public.discard_stripe_event(p_event_id => $1, p_reason => $2, p_by => $3)

-- event_progress --
-- Where events stand, for an operator waiting on them: state, failed attempts so far, the last error.
select e.id as event_id, public.stripe_event_state(e.status, f.next_retry, e.discarded_at) as status,
       coalesce(f.failure_count, 0) as attempts, f.next_retry,
       case when e.status = 'error' then coalesce(e.error, f.error_message) end as last_error
from public.stripe_events e
left join public.webhook_failures f on f.event_id = e.id
where e.id = any($1::text[])

-- map_customer --
-- Map Stripe customer $1 to user $2 ($3: replace another user's mapping), recorded as done by $4.
select public.map_stripe_customer(p_customer_id => $1, p_user_id => $2, p_replace => $3, p_by => $4)

-- user_by_email --
-- A user's id from their e-mail address (case-insensitive); no row when there is none.
select u.id from auth.users u where lower(u.email) = lower($1) order by u.created_at limit 2

-- list_customers --
-- The customer → user mappings, newest first; $1 a customer, $2 a user (both optional), $3 how many.
select c.customer_id, c.user_id, u.email, c.created_at
from public.stripe_customers c
left join auth.users u on u.id = c.user_id
where ($1::text is null or c.customer_id = $1) and ($2::uuid is null or c.user_id = $2)
order by c.created_at desc
limit $3

-- add_plan_price --
-- Map Stripe price $1 to a plan of tier $2 (named $3 when a row is made), recorded as done by $4.
select public.add_plan_price(p_price_id => $1, p_tier => $2, p_name => $3, p_by => $4)

-- list_plans --
-- Plans, by tier, with every Stripe price that buys them (this project's column and the deployed shop's
-- monthly and yearly ones, read through to_jsonb so one query serves both shapes).
select p.id, p.name, p.tier,
       array_remove(array[p.stripe_price_id, to_jsonb(p) ->> 'stripe_price_id_month',
                          to_jsonb(p) ->> 'stripe_price_id_year'], null) as prices
from public.plans p
where to_jsonb(p) ->> 'deleted_at' is null
order by p.tier, p.name

-- list_content --
-- Neurons and bundles, live ($1 false) or soft-deleted ($1 true: when each may be hard-deleted); $2 how many.
(select 'neuron' as kind, n.id, n.slug, n.title, n.published, n.required_tier::text as required_tier,
        n.deleted_at, n.deletion_reason, n.deleted_at + interval '90 days' as hard_delete_from
   from public.neurons n
  where (n.deleted_at is not null) = $1)
union all
(select 'bundle', b.id, b.slug, b.title, null, b.required_tier::text, b.deleted_at, b.deletion_reason,
        b.deleted_at + interval '90 days'
   from public.bundles b
  where (b.deleted_at is not null) = $1)
order by kind desc, slug, id
limit $2

-- content_kind --
-- Whether an id names a neuron or a bundle: live or soft-deleted rows first, then the audit trail (hard-deleted).
select coalesce(
  (select 'neuron' from public.neurons where id = $1),
  (select 'bundle' from public.bundles where id = $1),
  (select l.content_kind from public.content_deletion_log l where l.content_id = $1 order by l.id desc limit 1))

-- content_guard_neuron --
-- Whether a neuron can be deleted now, and what depends on it.
select can_delete, reason, active_bundles, active_subscriptions from public.f_can_delete_neuron(p_neuron_id => $1)

-- content_guard_bundle --
-- Whether a bundle can be deleted now, and what depends on it.
select can_delete, reason, active_subscriptions from public.f_can_delete_bundle(p_bundle_id => $1)

-- content_soft_delete_neuron --
-- Soft-delete a neuron if the guard allows; false when it was deleted already.
select public.f_soft_delete_neuron(p_neuron_id => $1, p_reason => $2)

-- content_soft_delete_bundle --
-- Soft-delete a bundle and take its links down if the guard allows; false when it was deleted already.
select public.f_soft_delete_bundle(p_bundle_id => $1, p_reason => $2)

-- content_restore_neuron --
-- Restore a neuron and its links to live bundles; false when it was not deleted.
select public.f_restore_neuron(p_neuron_id => $1)

-- content_restore_bundle --
-- Restore a bundle and its links to live neurons; false when it was not deleted.
select public.f_restore_bundle(p_bundle_id => $1)

-- content_hard_delete_neuron --
-- Remove a neuron soft-deleted 90+ days ago, guard re-checked; false when it is gone already.
select public.f_hard_delete_neuron(p_neuron_id => $1)

-- content_hard_delete_bundle --
-- Remove a bundle soft-deleted 90+ days ago, guard re-checked; false when it is gone already.
select public.f_hard_delete_bundle(p_bundle_id => $1)

-- content_history --
-- The audit trail of one neuron or bundle, oldest first.
select l.occurred_at, l.action, l.content_kind as kind, l.slug, l.actor_id, l.actor_role, l.reason,
       jsonb_array_length(l.cascaded) as links, l.cascaded::text as cascaded
from public.content_deletion_log l
where l.content_id = $1 and ($2::text is null or l.content_kind = $2)
order by l.id

-- rate_limit_dashboard --
-- Per endpoint: buckets used and requests/blocked in the last hour (admin-only view).
select * from public.v_rate_limit_dashboard
order by requests_last_hour desc, endpoint_key

-- rate_limit_top_users --
-- The busiest callers of the last 24 hours, by user id or anonymous address; $1 = how many.
select * from public.v_rate_limit_top_users
order by requests_last_24h desc, blocked_last_24h desc, last_request desc
limit $1

-- check_webhook_limit --
-- Take $1 tokens (a lease) from the shared stripe_webhook bucket. Its own statement: the bucket row is
-- unlogged and its lock is released at once, instead of being held through the event insert's WAL flush.
select r.allowed, r.tokens_remaining, greatest(1, ceil(extract(epoch from r.reset_time - now())))::int as retry_after
from public.f_check_rate_limit(p_endpoint_key => 'stripe_webhook', p_tokens_required => $1) r

-- cleanup_begin --
-- Record a cleanup run holding its job for $4 seconds (each batch extends it); run_id null (with the reason)
-- when another run holds the job or the slot ran.
select run_id, refused from public.cleanup_begin(p_job => $1, p_slot => $2, p_run_by => $3, p_lease_seconds => $4)

-- cleanup_finish --
-- Close a cleanup run, ok ($2 null) or with an error; returns the run with its counts.
select id, job, status, counts, batches, started_at, finished_at, error from public.cleanup_finish(p_run_id => $1, p_error => $2)

-- cleanup_stripe_events --
-- One batch (or, dry run, a count) of finished Stripe events past retention, with their failure rows.
select table_name, deleted_count from public.cleanup_stripe_events(
  p_event_days => $1, p_failure_days => $2, p_batch_size => $3, p_dry_run => $4, p_run_id => $5)

-- cleanup_webhook_failures --
-- One batch (or, dry run, a count) of failure history of events that succeeded later.
select table_name, deleted_count from public.cleanup_webhook_failures(
  p_failure_days => $1, p_batch_size => $2, p_dry_run => $3, p_run_id => $4)

-- cleanup_rate_limit --
-- One batch (or, dry run, a count) of old rate_limit_log rows and idle rate_limit_buckets.
select table_name, deleted_count from public.cleanup_rate_limit(
  p_log_days => $1, p_bucket_days => $2, p_batch_size => $3, p_dry_run => $4, p_run_id => $5)

-- cleanup_deleted_content --
-- Hard-delete content soft-deleted 90 days ago (f_cleanup_old_deleted_data), or count it (dry run).
select table_name, deleted_count from public.cleanup_deleted_content(p_dry_run => $1, p_run_id => $2)

-- last_cleanup_runs --
-- The latest run of each cleanup job.
select distinct on (r.job) r.job, r.status, r.started_at, r.finished_at, r.counts, r.batches, r.error, r.run_by
from public.cleanup_runs r
order by r.job, r.started_at desc

-- queue_gauges --
-- Cheap, index-backed: dead events, events waiting for a retry, age of the oldest pending event (seconds).
select (select count(*) from public.webhook_failures f
         where f.dead_at is not null and f.resolved_at is null and f.next_retry is null) as dead,
       (select count(*) from public.webhook_failures f where f.next_retry is not null) as retrying,
       (select extract(epoch from now() - min(e.received_at))::float8 from public.stripe_events e
         where e.status = 'pending') as oldest_pending_seconds

-- events_by_mode --
-- Events received in the last day, live and test.
select count(*) filter (where e.livemode) as live, count(*) filter (where not e.livemode) as test
from public.stripe_events e
where e.received_at >= now() - interval '1 day'

-- events_by_status --
-- Events received in the last day by status, and how many of them in the last hour.
select e.status, count(*) filter (where e.received_at >= now() - interval '1 hour') as last_hour, count(*) as last_day
from public.stripe_events e
where e.received_at >= now() - interval '1 day'
group by e.status
order by e.status

-- event_state --
-- What an event is now, for a job that found it not due; retry_in is by Postgres' clock, the one
-- consume_due_event goes by.
select e.type as event_type, e.status, f.next_retry, coalesce(f.failure_count, 0) as failures,
       extract(epoch from f.next_retry - now())::float8 as retry_in
from public.stripe_events e
left join public.webhook_failures f on f.event_id = e.id
where e.id = $1

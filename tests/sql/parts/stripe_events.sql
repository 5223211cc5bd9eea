-- =============================================================================
-- Stripe events (18_stripe_events_dlq.sql, 45_stripe_events_v2.sql): production checks, runnable with psql.
-- Included by tests/sql/test-production-infrastructure.sql (inside begin ...
-- rollback, as the migrating role). Uses its own savepoint and ids that no real
-- event has (evt_sqlcheck_*), so it leaves nothing behind. The first wrong
-- result raises. Uses pg_temp.expect / expect_error / act_as from the main file.
-- =============================================================================

savepoint stripe_events_part;

\echo stripe events: purchases are applied once per payment
select pg_temp.act_as(null);
insert into public.neurons (id, slug, title) values ('0badc0de-0000-4000-8000-000000000001', 'sqlcheck-neuron', 'SQL check');
insert into public.plans (name, tier, stripe_price_id) values ('SQL check', 3, 'price_sqlcheck');

create temporary table sqlcheck_events (name text primary key, payload jsonb) on commit drop;
insert into sqlcheck_events values
  ('checkout', '{"id": "evt_sqlcheck_checkout", "object": "event", "type": "checkout.session.completed", "created": 1000,
     "data": {"object": {"id": "cs_sqlcheck", "object": "checkout.session", "mode": "payment", "payment_status": "paid",
       "customer": "cus_sqlcheck", "payment_intent": "pi_sqlcheck", "amount_total": 500, "currency": "eur",
       "client_reference_id": "0badc0de-0000-4000-8000-0000000000aa",
       "metadata": {"neuron_id": "0badc0de-0000-4000-8000-000000000001"}}}}'),
  ('intent', '{"id": "evt_sqlcheck_intent", "object": "event", "type": "payment_intent.succeeded", "created": 999,
     "data": {"object": {"id": "pi_sqlcheck", "object": "payment_intent", "amount": 500, "amount_received": 500,
       "currency": "eur", "customer": "cus_sqlcheck", "metadata": {}}}}'),
  ('sub_updated', '{"id": "evt_sqlcheck_sub_updated", "object": "event", "type": "customer.subscription.updated", "created": 2000,
     "data": {"object": {"id": "sub_sqlcheck", "object": "subscription", "customer": "cus_sqlcheck", "status": "active",
       "items": {"data": [{"price": {"id": "price_sqlcheck"}, "current_period_end": 4000000000}]}}}}'),
  ('sub_created', '{"id": "evt_sqlcheck_sub_created", "object": "event", "type": "customer.subscription.created", "created": 1500,
     "data": {"object": {"id": "sub_sqlcheck", "object": "subscription", "customer": "cus_sqlcheck", "status": "incomplete",
       "items": {"data": [{"price": {"id": "price_sqlcheck"}, "current_period_end": 4000000000}]}}}}'),
  ('sub_deleted', '{"id": "evt_sqlcheck_sub_deleted", "object": "event", "type": "customer.subscription.deleted", "created": 3000,
     "data": {"object": {"id": "sub_sqlcheck", "object": "subscription", "customer": "cus_sqlcheck", "status": "canceled",
       "items": {"data": [{"price": {"id": "price_sqlcheck"}, "current_period_end": 4000000000}]}}}}'),
  ('sub_late', '{"id": "evt_sqlcheck_sub_late", "object": "event", "type": "customer.subscription.updated", "created": 4000,
     "data": {"object": {"id": "sub_sqlcheck", "object": "subscription", "customer": "cus_sqlcheck", "status": "active",
       "items": {"data": [{"price": {"id": "price_sqlcheck"}, "current_period_end": 4000000000}]}}}}'),
  ('invoice_legacy', '{"id": "evt_sqlcheck_inv_legacy", "object": "event", "type": "invoice.payment_succeeded", "created": 5000,
     "data": {"object": {"id": "in_sqlcheck_legacy", "object": "invoice", "customer": "cus_sqlcheck", "status": "paid",
       "subscription": "sub_sqlcheck", "payment_intent": "pi_sqlcheck_inv1", "amount_due": 900, "amount_paid": 900}}}'),
  ('invoice_current', '{"id": "evt_sqlcheck_inv_current", "object": "event", "type": "invoice.payment_failed", "created": 5001,
     "data": {"object": {"id": "in_sqlcheck_current", "object": "invoice", "customer": "cus_sqlcheck", "status": "open",
       "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_sqlcheck"}},
       "payments": {"data": [{"payment": {"type": "payment_intent", "payment_intent": "pi_sqlcheck_inv2"}}]},
       "amount_due": 900, "amount_paid": 0, "attempt_count": 1}}}'),
  ('stranger', '{"id": "evt_sqlcheck_stranger", "object": "event", "type": "customer.subscription.created", "created": 6000,
     "data": {"object": {"id": "sub_sqlcheck_2", "object": "subscription", "customer": "cus_sqlcheck_unknown", "status": "active",
       "items": {"data": [{"price": {"id": "price_sqlcheck"}}]}}}}'),
  ('unknown_type', '{"id": "evt_sqlcheck_unknown_type", "object": "event", "type": "invoice.paid", "created": 7000,
     "data": {"object": {"id": "in_sqlcheck_other"}}}');

create function pg_temp.consume(p_name text) returns text language sql as $$
  select public.apply_stripe_event(e.payload ->> 'id', e.payload ->> 'type', e.payload)
  from sqlcheck_events e where e.name = p_name
$$;

select pg_temp.expect(pg_temp.consume('intent') = 'ok', 'a payment intent without product metadata is ok');
select pg_temp.expect(pg_temp.consume('checkout') = 'ok', 'checkout.session.completed applies');
select pg_temp.expect(pg_temp.consume('checkout') = 'duplicate', 'the same event again is a duplicate');
select pg_temp.expect(pg_temp.consume('intent') = 'duplicate', 'the intent again is a duplicate');
select pg_temp.expect(
  (select count(*) = 1 and min(amount) = 500 and min(checkout_session_id) = 'cs_sqlcheck'
     from public.user_purchases where payment_intent_id = 'pi_sqlcheck'),
  'a checkout session and its payment intent are one purchase');
select pg_temp.expect(
  (select user_id = '0badc0de-0000-4000-8000-0000000000aa' from public.stripe_customers where customer_id = 'cus_sqlcheck'),
  'the checkout taught the customer mapping');

\echo stripe events: the deployed API and the deployed checkout metadata
insert into sqlcheck_events values
  ('deployed', '{"id": "evt_sqlcheck_deployed", "object": "event", "type": "checkout.session.completed", "created": 1100,
     "data": {"object": {"id": "cs_sqlcheck_deployed", "object": "checkout.session", "mode": "payment",
       "payment_status": "paid", "payment_intent": "pi_sqlcheck_deployed", "amount_total": 700, "currency": "eur",
       "metadata": {"uid": "0badc0de-0000-4000-8000-0000000000bb", "kind": "neuron",
                    "neuron_id": "0badc0de-0000-4000-8000-000000000001"}}}}');
select pg_temp.expect(
  (select public.consume_stripe_event(p_id => payload ->> 'id', p_type => payload ->> 'type', p_payload => payload)
     from sqlcheck_events where name = 'deployed'),
  'consume_stripe_event(p_id, p_type, p_payload) applies an event and says true');
select pg_temp.expect(
  (select not public.consume_stripe_event(payload ->> 'id', payload ->> 'type', payload) from sqlcheck_events where name = 'deployed'),
  'consume_stripe_event says false for an event applied before');
select pg_temp.expect(
  (select count(*) = 1 from public.user_purchases
    where payment_intent_id = 'pi_sqlcheck_deployed' and user_id = '0badc0de-0000-4000-8000-0000000000bb'),
  'metadata.uid and metadata.kind (the deployed checkout) name the buyer and the product');

\echo stripe events: subscriptions keep the newest state and deletion is terminal
select pg_temp.expect(pg_temp.consume('sub_updated') = 'ok', 'subscription updated applies');
select pg_temp.expect(pg_temp.consume('sub_created') = 'ok', 'an older created event is consumed');
select pg_temp.expect(
  (select status = 'active' and plan_tier = 3 and last_event_created = 2000 from public.user_subscriptions
    where stripe_subscription_id = 'sub_sqlcheck'),
  'an older event does not overwrite a newer one; the price maps to its tier');
select pg_temp.expect(public.user_access_tier('0badc0de-0000-4000-8000-0000000000aa') = 3, 'an active subscription gives its tier');
select pg_temp.expect(pg_temp.consume('sub_deleted') = 'ok', 'subscription deleted applies');
select pg_temp.expect(pg_temp.consume('sub_late') = 'ok', 'a later update is consumed');
select pg_temp.expect(
  (select status = 'canceled' and ended_at is not null from public.user_subscriptions where stripe_subscription_id = 'sub_sqlcheck'),
  'a deleted subscription is never resurrected');
select pg_temp.expect(public.user_access_tier('0badc0de-0000-4000-8000-0000000000aa') is null, 'no access after deletion');

\echo stripe events: invoices in both shapes, unknown types skipped
select pg_temp.expect(pg_temp.consume('invoice_legacy') = 'ok' and pg_temp.consume('invoice_current') = 'ok', 'invoices apply');
select pg_temp.expect(
  (select count(*) = 2 from public.invoices
    where subscription_id = 'sub_sqlcheck' and payment_intent_id in ('pi_sqlcheck_inv1', 'pi_sqlcheck_inv2')),
  'legacy and current invoice shapes give the subscription and the payment intent');
select pg_temp.expect(pg_temp.consume('unknown_type') = 'skipped', 'an unhandled type is skipped');

\echo stripe events: failures retry, die, and come back through reprocess
select pg_temp.expect_error($$select pg_temp.consume('stranger')$$, 'PT001', 'an unknown customer is a retryable error');
insert into public.stripe_events (id, type, created, payload)
select payload ->> 'id', payload ->> 'type', 6000, payload from sqlcheck_events where name = 'stranger';
select pg_temp.expect(
  (select not dead and attempt = 1 and next_retry > now()
     from public.record_stripe_event_failure('evt_sqlcheck_stranger', 'user not known', 'PT001', 2, 60, 2, 3600)),
  'a first transient failure schedules a retry');
select pg_temp.expect(
  (select dead and attempt = 2 and next_retry is null
     from public.record_stripe_event_failure('evt_sqlcheck_stranger', 'user not known', 'PT001', 2, 60, 2, 3600)),
  'the last attempt goes dead');
select pg_temp.expect(
  (select status = 'error' from public.stripe_events where id = 'evt_sqlcheck_stranger'), 'a dead event stays error');
select pg_temp.expect(
  (select count(*) = 1 from public.claim_dead_alert('evt_sqlcheck_stranger'))
  and (select count(*) = 0 from public.claim_dead_alert('evt_sqlcheck_stranger')),
  'a death is announced once');
select pg_temp.expect(public.reprocess_stripe_event('evt_sqlcheck_stranger') = false,
  'reprocess records a failure instead of raising');
select pg_temp.expect(
  (select error like 'user not known yet%' from public.stripe_events where id = 'evt_sqlcheck_stranger'),
  'the event carries its last error');
insert into public.stripe_customers values ('cus_sqlcheck_unknown', '0badc0de-0000-4000-8000-0000000000aa');
select pg_temp.expect(public.reprocess_stripe_event('evt_sqlcheck_stranger'), 'reprocess applies once fixed');
select pg_temp.expect(
  (select status = 'ok' and error is null from public.stripe_events where id = 'evt_sqlcheck_stranger'),
  'an applied event carries no error');
select pg_temp.expect(
  (select failure_count = 3 and jsonb_array_length(history) = 3 and resolved_at is not null
     from public.webhook_failures where event_id = 'evt_sqlcheck_stranger'),
  'the history of every attempt is kept');
select pg_temp.expect_error($$select public.requeue_stripe_event('evt_sqlcheck_stranger')$$, 'PT003',
  'requeueing an event that is not dead is refused');

\echo stripe events: only admins see or touch them
select pg_temp.act_as('authenticated', '0badc0de-0000-4000-8000-0000000000aa');
select pg_temp.expect((select count(*) = 0 from public.stripe_events), 'a user sees no events');
select pg_temp.expect((select count(*) = 1 from public.user_purchases), 'a user sees their own purchase');
select pg_temp.expect_error($$select public.requeue_stripe_event('evt_sqlcheck_stranger')$$, '42501', 'a user cannot requeue');
select pg_temp.act_as('anon');
select pg_temp.expect_error($$select public.reprocess_stripe_event('evt_sqlcheck_stranger')$$, '42501', 'anon cannot reprocess');
select pg_temp.expect_error($$select public.consume_stripe_event('evt_x', 'x', '{}')$$, '42501', 'anon cannot consume');
select pg_temp.act_as('authenticated', '0badc0de-0000-4000-8000-0000000000aa', true);
select pg_temp.expect((select count(*) >= 1 from public.stripe_events where id like 'evt_sqlcheck_%'), 'an admin sees events');
select pg_temp.act_as(null);

rollback to savepoint stripe_events_part;

-- =============================================================================
-- A failed attempt in one call
--
-- The worker recorded a failure in three round trips, with Python choosing
-- between them: which attempt it was, the failure itself, and (for a death)
-- the right to announce it. fail_stripe_event does all three in one
-- statement and one transaction, and returns what the worker logs and
-- alerts: the event's type, the attempt, when it retries or that it died,
-- and, once per death, the alert's details.
-- =============================================================================
create or replace function public.fail_stripe_event(
  p_event_id text,
  p_error text,
  p_error_code text default null,
  p_max_attempts integer default 3,
  p_base_seconds double precision default 60,
  p_factor double precision default 2,
  p_cap_seconds double precision default 3600,
  out event_type text,
  out attempt integer,
  out next_retry timestamptz,
  out dead boolean,
  out alert boolean,
  out dead_count bigint
)
language plpgsql
security definer
set search_path = ''
as $$
begin
  select e.type into event_type from public.stripe_events e where e.id = p_event_id;
  if event_type is null then
    raise exception 'no stripe event %', p_event_id using errcode = 'P0002';
  end if;
  select r.attempt, r.next_retry, r.dead into attempt, next_retry, dead
  from public.record_stripe_event_failure(p_event_id, p_error, p_error_code, p_max_attempts,
                                          p_base_seconds, p_factor, p_cap_seconds) r;
  alert := false;
  if dead then
    select true, c.dead_count into alert, dead_count from public.claim_dead_alert(p_event_id) c;
    alert := coalesce(alert, false);
  end if;
end;
$$;

comment on function public.fail_stripe_event(text, text, text, integer, double precision, double precision, double precision) is
  'Records a failed attempt (record_stripe_event_failure) and, for a death, claims its alert (claim_dead_alert), in one call: type, attempt, next retry, dead, whether to alert, the dead count. attempt is null when another attempt applied the event meanwhile.';
revoke all on function public.fail_stripe_event(text, text, text, integer, double precision, double precision, double precision)
  from public, anon, authenticated, service_role;
grant execute on function public.fail_stripe_event(text, text, text, integer, double precision, double precision, double precision)
  to service_role;

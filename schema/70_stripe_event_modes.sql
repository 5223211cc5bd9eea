-- =============================================================================
-- Stripe events of a mode the service does not accept (test or live)
--
-- Every event says whether it comes from live or test mode (livemode). A
-- deployment that should only ever see one (the default accepts both, so
-- nothing changes for existing ones) stores the others and marks them
-- skipped, with the reason in error: never applied, so a test-mode checkout
-- cannot grant real access if a test secret is ever configured. Ingest stores
-- them skipped; the worker skips, through skip_stripe_event(), one stored
-- before the setting changed.
-- =============================================================================

-- skip_stripe_event: mark a not-yet-applied event skipped, with the reason;
-- returns 'skipped', or 'duplicate' when it was applied or skipped already.
-- SECURITY DEFINER as apply_stripe_event (45_stripe_events_v2.sql).
create or replace function public.skip_stripe_event(p_id text, p_reason text)
returns text
language plpgsql
security definer
set search_path = ''
as $$
begin
  update public.stripe_events e
     set status = 'skipped', processed_at = now(), error = p_reason
   where e.id = p_id and e.status in ('pending', 'error');
  if not found then
    return 'duplicate';
  end if;
  update public.webhook_failures f set next_retry = null, resolved_at = now()
   where f.event_id = p_id and f.resolved_at is null;
  return 'skipped';
end;
$$;

comment on function public.skip_stripe_event(text, text) is
  'Marks a pending or failing event skipped with the reason (a mode the service does not accept); never applies it.';
revoke all on function public.skip_stripe_event(text, text) from public, anon, authenticated, service_role;
grant execute on function public.skip_stripe_event(text, text) to service_role;

-- =============================================================================
-- The service's own role
--
-- The web and the worker may run as the owner of the schema, as service_role
-- (a login role that switches to it), or as a login role that is a member of
-- service_role. service_role bypasses row-level security; its members do not:
-- they hold its grants, and the policies written for service_role apply to
-- them. Everything the service does goes through SECURITY DEFINER functions
-- (apply_stripe_event, record_stripe_event_failure, the cleanups, the
-- rate-limit check) or reads tables whose policies let is_admin() read, which
-- counts service_role's members, except one statement: ingest's insert of an
-- accepted event. This policy lets service_role (and so its members) make it.
-- =============================================================================

drop policy if exists stripe_events_service_insert on public.stripe_events;
create policy stripe_events_service_insert on public.stripe_events for insert to service_role with check (true);

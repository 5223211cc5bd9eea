-- =============================================================================
-- Every function says what it is for
--
-- Admins read `\df+`; a function without a comment says nothing there. These
-- are the functions of earlier files that had none (comments are metadata:
-- nothing else changes). tests/integration/test_schema.py keeps every
-- function in public commented.
-- =============================================================================

-- 23_neuron_delete_guard.sql: triggers
comment on function public.tg_content_deletion_log_append_only() is
  'Trigger: content_deletion_log is append-only, for the owner too (a trail that can be edited proves nothing).';
comment on function public.tg_content_deletion_columns() is
  'Trigger on neurons and bundles: only the delete functions set deleted_at / deleted_by / deletion_reason or delete a row.';
comment on function public.tg_bundle_neurons_liveness() is
  'Trigger on bundle_neurons: a new or re-pointed link is live exactly when both its ends are.';

-- 23: internal helpers (no grants; the f_* functions reach them)
comment on function public._require_admin(text) is
  'Internal: refuses a caller who is not an admin, naming what was refused.';
comment on function public._lock_content_deletions() is
  'Internal: serialises soft deletes, restores and hard deletes, so no live link ends up with a deleted end.';
comment on function public._content_row(text, uuid) is
  'Internal: the neuron or bundle an operation acts on; present is false for an unknown id.';
comment on function public._content_dependents(text, uuid, integer) is
  'Internal: what keeps content from deletion: live bundles holding it, active subscriptions reaching it, purchases of it.';
comment on function public._log_content_action(text, text, uuid, text, text, text, jsonb) is
  'Internal: appends one entry to content_deletion_log, naming the caller.';
comment on function public._soft_delete_content(text, uuid, text) is
  'Internal: hides a neuron or bundle and takes its live links down if the guard allows; false when deleted already.';
comment on function public._restore_content(text, uuid) is
  'Internal: shows a soft-deleted neuron or bundle again, with its links whose other end is live; false when not deleted.';
comment on function public._hard_delete_content(text, uuid, text) is
  'Internal: removes a row soft-deleted 90+ days ago that the guard still allows, with its links; false when gone already.';

-- 23: the API (admins, through PostgREST or psql)
comment on function public.f_can_delete_neuron(uuid) is
  'Whether a neuron can be (soft) deleted now, why not, and what depends on it (live bundles, active subscriptions).';
comment on function public.f_can_delete_bundle(uuid) is
  'Whether a bundle can be (soft) deleted now, why not, and how many active subscriptions reach it.';
comment on function public.f_soft_delete_neuron(uuid, text) is
  'Admin: soft-deletes a neuron if the guard allows (restorable for 90 days); false when it was deleted already.';
comment on function public.f_soft_delete_bundle(uuid, text) is
  'Admin: soft-deletes a bundle and takes its links down if the guard allows; false when it was deleted already.';
comment on function public.f_restore_neuron(uuid) is
  'Admin: restores a soft-deleted neuron and its links to live bundles; false when it was not deleted.';
comment on function public.f_restore_bundle(uuid) is
  'Admin: restores a soft-deleted bundle and its links to live neurons; false when it was not deleted.';
comment on function public.f_hard_delete_neuron(uuid) is
  'Admin: removes a neuron for good, 90+ days after its soft delete, guard re-checked; false when it is gone already.';
comment on function public.f_hard_delete_bundle(uuid) is
  'Admin: removes a bundle for good, 90+ days after its soft delete, guard re-checked; false when it is gone already.';
comment on function public.f_cleanup_old_deleted_data() is
  'Admin: hard-deletes everything soft-deleted 90+ days ago that the guard allows; what it keeps is named in a notice.';

-- 26_rate_limit.sql: the web app's calls
comment on function public.f_rate_limit_search(uuid) is
  'One ''search'' token for the caller (the JWT''s user, else the client address); true when the search may run.';
comment on function public.f_rate_limit_content_access(uuid) is
  'One ''content_access'' token for the caller; true when the neuron or bundle may be opened.';
comment on function public.f_rate_limit_admin_crud(uuid) is
  'One ''admin_crud'' token for the caller; true when the admin write may go ahead.';

-- 30_retention.sql, 46_retention_v2.sql: internal helpers
comment on function public._cleanup_require_admin(text) is
  'Internal: refuses a cleanup caller who is not an admin.';
comment on function public._cleanup_count(bigint, jsonb) is
  'Internal: adds one batch''s counts to a cleanup run and extends its lease; refuses a run that is not running.';
comment on function public._cleanup_floor(text, integer, integer) is
  'Internal: refuses a retention argument below its floor (SQLSTATE 22023).';

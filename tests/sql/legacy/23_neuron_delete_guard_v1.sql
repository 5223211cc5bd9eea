-- =============================================================================
-- TEST FIXTURE: the first version of 23_neuron_delete_guard.sql, as deployed.
-- Not a migration. tests/test_soft_delete_upgrade.py applies it on top of the
-- earlier migrations, adds data, then runs the current schema/ and checks the
-- database ends identical to a fresh install with the data kept.
--
-- What the current file has to repair:
--   * bundle_neurons has no deleted_at, so a bundle's links never go down and
--     a restore cannot tell which links its delete took;
--   * deleted_by references auth.users without ON DELETE SET NULL;
--   * slug is UNIQUE over all rows: a deleted row blocks re-creating its slug;
--   * the views join auth.users and hand every caller the deleter's e-mail
--     (they run as their owner, past row-level security);
--   * SECURITY DEFINER functions with search_path = public, EXECUTE left to
--     PUBLIC (anon included);
--   * permissive "live rows" policies that add to, rather than narrow, the
--     existing read policies.
-- =============================================================================

-- === 1. Soft delete columns ===

ALTER TABLE public.neurons
  ADD COLUMN IF NOT EXISTS deleted_at TIMESTAMPTZ,
  ADD COLUMN IF NOT EXISTS deleted_by UUID REFERENCES auth.users(id),
  ADD COLUMN IF NOT EXISTS deletion_reason TEXT;

ALTER TABLE public.bundles
  ADD COLUMN IF NOT EXISTS deleted_at TIMESTAMPTZ,
  ADD COLUMN IF NOT EXISTS deleted_by UUID REFERENCES auth.users(id),
  ADD COLUMN IF NOT EXISTS deletion_reason TEXT;

ALTER TABLE public.neurons ADD CONSTRAINT neurons_slug_key UNIQUE (slug);
ALTER TABLE public.bundles ADD CONSTRAINT bundles_slug_key UNIQUE (slug);

-- === 2. Delete guards ===

CREATE OR REPLACE FUNCTION public.f_can_delete_neuron(p_neuron_id UUID)
RETURNS TABLE(can_delete BOOLEAN, reason TEXT, active_bundles TEXT[], active_subscriptions INT)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
DECLARE
  v_bundles TEXT[];
  v_subs INT;
BEGIN
  SELECT ARRAY_AGG(b.title ORDER BY b.title) INTO v_bundles
  FROM bundles b JOIN bundle_neurons bn ON bn.bundle_id = b.id
  WHERE bn.neuron_id = p_neuron_id AND b.deleted_at IS NULL;

  SELECT COUNT(*) INTO v_subs
  FROM user_subscriptions us JOIN neurons n ON n.required_tier <= us.plan_tier
  WHERE n.id = p_neuron_id AND us.status = 'active' AND us.expires_at > NOW();

  RETURN QUERY SELECT
    v_bundles IS NULL AND v_subs = 0,
    CASE
      WHEN v_bundles IS NOT NULL THEN 'Neuron is used by active bundles: ' || ARRAY_TO_STRING(v_bundles, ', ')
      WHEN v_subs > 0 THEN 'Neuron is accessible through ' || v_subs || ' active subscriptions'
      ELSE 'Neuron can be deleted'
    END,
    COALESCE(v_bundles, ARRAY[]::TEXT[]),
    v_subs;
END
$$;

CREATE OR REPLACE FUNCTION public.f_can_delete_bundle(p_bundle_id UUID)
RETURNS TABLE(can_delete BOOLEAN, reason TEXT, active_subscriptions INT)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
DECLARE
  v_subs INT;
BEGIN
  SELECT COUNT(*) INTO v_subs
  FROM user_subscriptions us JOIN bundles b ON b.required_tier <= us.plan_tier
  WHERE b.id = p_bundle_id AND us.status = 'active' AND us.expires_at > NOW();

  RETURN QUERY SELECT
    v_subs = 0,
    CASE WHEN v_subs > 0 THEN 'Bundle is accessible through ' || v_subs || ' active subscriptions'
         ELSE 'Bundle can be deleted' END,
    v_subs;
END
$$;

-- === 3. Soft delete / restore (admins only) ===

CREATE OR REPLACE FUNCTION public.f_soft_delete_neuron(p_neuron_id UUID, p_reason TEXT DEFAULT NULL)
RETURNS BOOLEAN
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
DECLARE
  v_check RECORD;
BEGIN
  IF COALESCE(auth.jwt() -> 'app_metadata' ->> 'role', '') <> 'admin' THEN
    RAISE EXCEPTION 'Only admins can delete neurons';
  END IF;
  SELECT * INTO v_check FROM f_can_delete_neuron(p_neuron_id);
  IF NOT v_check.can_delete THEN
    RAISE EXCEPTION 'Cannot delete neuron: %', v_check.reason;
  END IF;
  UPDATE neurons SET deleted_at = NOW(), deleted_by = auth.uid(), deletion_reason = p_reason
  WHERE id = p_neuron_id AND deleted_at IS NULL;
  RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION public.f_soft_delete_bundle(p_bundle_id UUID, p_reason TEXT DEFAULT NULL)
RETURNS BOOLEAN
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
DECLARE
  v_check RECORD;
BEGIN
  IF COALESCE(auth.jwt() -> 'app_metadata' ->> 'role', '') <> 'admin' THEN
    RAISE EXCEPTION 'Only admins can delete bundles';
  END IF;
  SELECT * INTO v_check FROM f_can_delete_bundle(p_bundle_id);
  IF NOT v_check.can_delete THEN
    RAISE EXCEPTION 'Cannot delete bundle: %', v_check.reason;
  END IF;
  UPDATE bundles SET deleted_at = NOW(), deleted_by = auth.uid(), deletion_reason = p_reason
  WHERE id = p_bundle_id AND deleted_at IS NULL;
  RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION public.f_restore_neuron(p_neuron_id UUID)
RETURNS BOOLEAN
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
BEGIN
  IF COALESCE(auth.jwt() -> 'app_metadata' ->> 'role', '') <> 'admin' THEN
    RAISE EXCEPTION 'Only admins can restore neurons';
  END IF;
  UPDATE neurons SET deleted_at = NULL, deleted_by = NULL, deletion_reason = NULL WHERE id = p_neuron_id;
  RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION public.f_restore_bundle(p_bundle_id UUID)
RETURNS BOOLEAN
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
BEGIN
  IF COALESCE(auth.jwt() -> 'app_metadata' ->> 'role', '') <> 'admin' THEN
    RAISE EXCEPTION 'Only admins can restore bundles';
  END IF;
  UPDATE bundles SET deleted_at = NULL, deleted_by = NULL, deletion_reason = NULL WHERE id = p_bundle_id;
  RETURN FOUND;
END
$$;

-- === 4. Hard delete (after soft delete) ===

CREATE OR REPLACE FUNCTION public.f_hard_delete_neuron(p_neuron_id UUID)
RETURNS BOOLEAN
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
BEGIN
  IF COALESCE(auth.jwt() -> 'app_metadata' ->> 'role', '') <> 'admin' THEN
    RAISE EXCEPTION 'Only admins can hard-delete neurons';
  END IF;
  DELETE FROM neurons WHERE id = p_neuron_id AND deleted_at IS NOT NULL;
  RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION public.f_hard_delete_bundle(p_bundle_id UUID)
RETURNS BOOLEAN
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
BEGIN
  IF COALESCE(auth.jwt() -> 'app_metadata' ->> 'role', '') <> 'admin' THEN
    RAISE EXCEPTION 'Only admins can hard-delete bundles';
  END IF;
  DELETE FROM bundles WHERE id = p_bundle_id AND deleted_at IS NOT NULL;
  RETURN FOUND;
END
$$;

-- === 5. Cleanup (90 days) ===

CREATE OR REPLACE FUNCTION public.f_cleanup_old_deleted_data()
RETURNS TABLE(table_name TEXT, deleted_count INT, cleanup_date TIMESTAMPTZ)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
DECLARE
  v_cutoff TIMESTAMPTZ := NOW() - INTERVAL '90 days';
  v_neurons INT;
  v_bundles INT;
BEGIN
  DELETE FROM neurons WHERE deleted_at < v_cutoff;
  GET DIAGNOSTICS v_neurons = ROW_COUNT;
  DELETE FROM bundles WHERE deleted_at < v_cutoff;
  GET DIAGNOSTICS v_bundles = ROW_COUNT;
  RETURN QUERY SELECT 'neurons'::TEXT, v_neurons, v_cutoff
     UNION ALL SELECT 'bundles'::TEXT, v_bundles, v_cutoff;
END
$$;

-- === 6. Admin views ===

CREATE OR REPLACE VIEW public.v_neurons_deleted AS
SELECT n.id, n.slug, n.title, n.deleted_at, u.email AS deleted_by_email, n.deletion_reason
FROM public.neurons n
LEFT JOIN auth.users u ON u.id = n.deleted_by
WHERE n.deleted_at IS NOT NULL
ORDER BY n.deleted_at DESC;

CREATE OR REPLACE VIEW public.v_bundles_deleted AS
SELECT b.id, b.slug, b.title, b.deleted_at, u.email AS deleted_by_email, b.deletion_reason
FROM public.bundles b
LEFT JOIN auth.users u ON u.id = b.deleted_by
WHERE b.deleted_at IS NOT NULL
ORDER BY b.deleted_at DESC;

-- === 7. RLS: hide deleted rows ===

DROP POLICY IF EXISTS neurons_select_public ON public.neurons;
CREATE POLICY neurons_select_public ON public.neurons FOR SELECT TO anon, authenticated USING (deleted_at IS NULL);

DROP POLICY IF EXISTS bundles_select_public ON public.bundles;
CREATE POLICY bundles_select_public ON public.bundles FOR SELECT TO anon, authenticated USING (deleted_at IS NULL);

-- === 8. Grants ===

GRANT EXECUTE ON FUNCTION public.f_can_delete_neuron(UUID) TO authenticated;
GRANT EXECUTE ON FUNCTION public.f_can_delete_bundle(UUID) TO authenticated;
GRANT EXECUTE ON FUNCTION public.f_soft_delete_neuron(UUID, TEXT) TO authenticated;
GRANT EXECUTE ON FUNCTION public.f_soft_delete_bundle(UUID, TEXT) TO authenticated;
GRANT EXECUTE ON FUNCTION public.f_restore_neuron(UUID) TO authenticated;
GRANT EXECUTE ON FUNCTION public.f_restore_bundle(UUID) TO authenticated;
GRANT EXECUTE ON FUNCTION public.f_hard_delete_neuron(UUID) TO authenticated;
GRANT EXECUTE ON FUNCTION public.f_hard_delete_bundle(UUID) TO authenticated;
GRANT EXECUTE ON FUNCTION public.f_cleanup_old_deleted_data() TO authenticated;
GRANT SELECT ON public.v_neurons_deleted TO authenticated;
GRANT SELECT ON public.v_bundles_deleted TO authenticated;

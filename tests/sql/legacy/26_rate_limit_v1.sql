-- =============================================================================
-- LEGACY: the first version of 26_rate_limit.sql, as deployed before the
-- rewrite. Kept only so tests can build such a database and prove that the
-- current schema/26_rate_limit.sql upgrades it in place. Do not apply it
-- anywhere else. Its known faults, all fixed by the current file:
--   * read-then-write check (select ... then update): two concurrent calls can
--     spend the same token, and two first calls collide on the insert;
--   * integer tokens_remaining: fractional refill is thrown away;
--   * p_user_id trusted from anyone, and a NULL user is never limited;
--   * wrappers declared STABLE (PostgREST runs them read-only);
--   * functions with search_path = public; views joining auth.users (e-mails).
-- =============================================================================

CREATE TABLE IF NOT EXISTS public.rate_limit_config (
    endpoint_key TEXT PRIMARY KEY,
    requests_per_minute INTEGER NOT NULL DEFAULT 60,
    burst_size INTEGER NOT NULL DEFAULT 10,
    window_size_minutes INTEGER NOT NULL DEFAULT 1,
    is_active BOOLEAN DEFAULT TRUE,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS public.rate_limit_buckets (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID REFERENCES auth.users(id) ON DELETE CASCADE,
    endpoint_key TEXT NOT NULL REFERENCES public.rate_limit_config(endpoint_key),
    tokens_remaining INTEGER NOT NULL,
    last_refill TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    last_request TIMESTAMPTZ DEFAULT NOW(),
    request_count INTEGER DEFAULT 0,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE (user_id, endpoint_key)
);

CREATE TABLE IF NOT EXISTS public.rate_limit_log (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID REFERENCES auth.users(id) ON DELETE SET NULL,
    endpoint_key TEXT NOT NULL,
    request_timestamp TIMESTAMPTZ DEFAULT NOW(),
    tokens_consumed INTEGER DEFAULT 1,
    tokens_remaining INTEGER,
    was_allowed BOOLEAN NOT NULL,
    ip_address INET
);

CREATE INDEX IF NOT EXISTS idx_rate_limit_buckets_user_endpoint ON public.rate_limit_buckets(user_id, endpoint_key);
CREATE INDEX IF NOT EXISTS idx_rate_limit_buckets_last_request ON public.rate_limit_buckets(last_request);
CREATE INDEX IF NOT EXISTS idx_rate_limit_log_user_id ON public.rate_limit_log(user_id);
CREATE INDEX IF NOT EXISTS idx_rate_limit_log_endpoint ON public.rate_limit_log(endpoint_key);
CREATE INDEX IF NOT EXISTS idx_rate_limit_log_timestamp ON public.rate_limit_log(request_timestamp);

INSERT INTO public.rate_limit_config (endpoint_key, requests_per_minute, burst_size, window_size_minutes) VALUES
    ('search', 30, 10, 1),
    ('content_access', 120, 30, 1),
    ('admin_crud', 60, 20, 1),
    ('stripe_webhook', 600, 200, 1),
    ('checkout', 10, 5, 1),
    ('api_general', 100, 50, 1)
ON CONFLICT (endpoint_key) DO NOTHING;

ALTER TABLE public.rate_limit_config ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.rate_limit_buckets ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.rate_limit_log ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS "Anyone can read rate limit config" ON public.rate_limit_config;
CREATE POLICY "Anyone can read rate limit config" ON public.rate_limit_config FOR SELECT USING (true);
DROP POLICY IF EXISTS "Admins can manage rate limit config" ON public.rate_limit_config;
CREATE POLICY "Admins can manage rate limit config" ON public.rate_limit_config FOR ALL USING (
    EXISTS (SELECT 1 FROM auth.users WHERE id = auth.uid() AND raw_app_meta_data->>'role' = 'admin')
);
DROP POLICY IF EXISTS "Users can view own buckets" ON public.rate_limit_buckets;
CREATE POLICY "Users can view own buckets" ON public.rate_limit_buckets FOR SELECT USING (auth.uid() = user_id);
DROP POLICY IF EXISTS "Users can view own log" ON public.rate_limit_log;
CREATE POLICY "Users can view own log" ON public.rate_limit_log FOR SELECT USING (auth.uid() = user_id);

GRANT SELECT ON public.rate_limit_config TO anon, authenticated;
GRANT SELECT ON public.rate_limit_buckets, public.rate_limit_log TO authenticated;

CREATE OR REPLACE FUNCTION public.f_check_rate_limit(
    p_endpoint_key TEXT,
    p_tokens_required INTEGER DEFAULT 1,
    p_user_id UUID DEFAULT NULL
)
RETURNS TABLE (allowed BOOLEAN, tokens_remaining INTEGER, reset_time TIMESTAMPTZ, reason TEXT)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public
AS $$
DECLARE
    v_config RECORD;
    v_bucket RECORD;
    v_user_id UUID := COALESCE(p_user_id, auth.uid());
    v_tokens INTEGER;
    v_elapsed NUMERIC;
BEGIN
    SELECT * INTO v_config FROM rate_limit_config WHERE endpoint_key = p_endpoint_key AND is_active = TRUE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT TRUE, 999, NOW(), 'No rate limit configured'::TEXT;
        RETURN;
    END IF;

    IF v_user_id IS NULL THEN
        RETURN QUERY SELECT TRUE, v_config.burst_size, NOW(), 'Anonymous'::TEXT;
        RETURN;
    END IF;

    SELECT * INTO v_bucket FROM rate_limit_buckets WHERE user_id = v_user_id AND endpoint_key = p_endpoint_key;
    IF NOT FOUND THEN
        INSERT INTO rate_limit_buckets (user_id, endpoint_key, tokens_remaining, last_refill, last_request, request_count)
        VALUES (v_user_id, p_endpoint_key, v_config.burst_size - p_tokens_required, NOW(), NOW(), 1);
        INSERT INTO rate_limit_log (user_id, endpoint_key, tokens_consumed, tokens_remaining, was_allowed)
        VALUES (v_user_id, p_endpoint_key, p_tokens_required, v_config.burst_size - p_tokens_required, TRUE);
        RETURN QUERY SELECT TRUE, v_config.burst_size - p_tokens_required, NOW() + INTERVAL '1 minute', NULL::TEXT;
        RETURN;
    END IF;

    v_elapsed := EXTRACT(EPOCH FROM (NOW() - v_bucket.last_refill)) / 60;
    v_tokens := LEAST(v_config.burst_size, v_bucket.tokens_remaining + FLOOR(v_elapsed * v_config.requests_per_minute)::INTEGER);

    IF v_tokens >= p_tokens_required THEN
        UPDATE rate_limit_buckets
        SET tokens_remaining = v_tokens - p_tokens_required, last_refill = NOW(), last_request = NOW(),
            request_count = request_count + 1
        WHERE id = v_bucket.id;
        INSERT INTO rate_limit_log (user_id, endpoint_key, tokens_consumed, tokens_remaining, was_allowed)
        VALUES (v_user_id, p_endpoint_key, p_tokens_required, v_tokens - p_tokens_required, TRUE);
        RETURN QUERY SELECT TRUE, v_tokens - p_tokens_required, NOW() + INTERVAL '1 minute', NULL::TEXT;
    ELSE
        UPDATE rate_limit_buckets SET last_request = NOW(), request_count = request_count + 1 WHERE id = v_bucket.id;
        INSERT INTO rate_limit_log (user_id, endpoint_key, tokens_consumed, tokens_remaining, was_allowed)
        VALUES (v_user_id, p_endpoint_key, 0, v_tokens, FALSE);
        RETURN QUERY SELECT FALSE, v_tokens, NOW() + INTERVAL '1 minute', 'Rate limit exceeded'::TEXT;
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION public.f_rate_limit_search(p_user_id UUID DEFAULT NULL)
RETURNS BOOLEAN LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT allowed FROM f_check_rate_limit('search', 1, p_user_id);
$$;

CREATE OR REPLACE FUNCTION public.f_rate_limit_content_access(p_user_id UUID DEFAULT NULL)
RETURNS BOOLEAN LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT allowed FROM f_check_rate_limit('content_access', 1, p_user_id);
$$;

CREATE OR REPLACE FUNCTION public.f_rate_limit_admin_crud(p_user_id UUID DEFAULT NULL)
RETURNS BOOLEAN LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT allowed FROM f_check_rate_limit('admin_crud', 1, p_user_id);
$$;

CREATE OR REPLACE FUNCTION public.f_cleanup_rate_limit_data()
RETURNS TABLE (table_name TEXT, deleted_count INTEGER, cleanup_date TIMESTAMPTZ)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    v_count INTEGER;
BEGIN
    DELETE FROM rate_limit_log WHERE request_timestamp < NOW() - INTERVAL '7 days';
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN QUERY SELECT 'rate_limit_log'::TEXT, v_count, NOW();
    DELETE FROM rate_limit_buckets WHERE last_request < NOW() - INTERVAL '30 days';
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN QUERY SELECT 'rate_limit_buckets'::TEXT, v_count, NOW();
END;
$$;

GRANT EXECUTE ON FUNCTION public.f_check_rate_limit(TEXT, INTEGER, UUID) TO anon, authenticated;
GRANT EXECUTE ON FUNCTION public.f_rate_limit_search(UUID) TO anon, authenticated;
GRANT EXECUTE ON FUNCTION public.f_rate_limit_content_access(UUID) TO anon, authenticated;
GRANT EXECUTE ON FUNCTION public.f_rate_limit_admin_crud(UUID) TO authenticated;

CREATE OR REPLACE VIEW public.v_rate_limit_dashboard AS
SELECT
    c.endpoint_key,
    c.requests_per_minute,
    c.burst_size,
    c.is_active,
    COUNT(DISTINCT b.id) AS active_buckets,
    COUNT(l.id) FILTER (WHERE l.request_timestamp > NOW() - INTERVAL '1 hour') AS requests_last_hour,
    COUNT(l.id) FILTER (WHERE l.request_timestamp > NOW() - INTERVAL '1 hour' AND NOT l.was_allowed) AS blocked_last_hour,
    ROUND(100.0 * COUNT(l.id) FILTER (WHERE NOT l.was_allowed) / NULLIF(COUNT(l.id), 0), 2) AS block_rate_percent
FROM public.rate_limit_config c
LEFT JOIN public.rate_limit_buckets b ON b.endpoint_key = c.endpoint_key
LEFT JOIN public.rate_limit_log l ON l.endpoint_key = c.endpoint_key
GROUP BY c.endpoint_key, c.requests_per_minute, c.burst_size, c.is_active;

CREATE OR REPLACE VIEW public.v_rate_limit_top_users AS
SELECT
    l.user_id,
    u.email,
    COUNT(*) AS total_requests,
    COUNT(*) FILTER (WHERE NOT l.was_allowed) AS blocked_requests,
    MAX(l.request_timestamp) AS last_request
FROM public.rate_limit_log l
JOIN auth.users u ON u.id = l.user_id
WHERE l.request_timestamp > NOW() - INTERVAL '24 hours'
GROUP BY l.user_id, u.email
ORDER BY total_requests DESC
LIMIT 100;

GRANT SELECT ON public.v_rate_limit_dashboard, public.v_rate_limit_top_users TO authenticated;

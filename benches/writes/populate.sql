-- 20,000 tenants, each with a run of 3 steps (the first running), in vend's real schema; k maps a number to a run.
CREATE TABLE k (n int PRIMARY KEY, run_id uuid NOT NULL, tenant_id uuid NOT NULL);
INSERT INTO k SELECT g, gen_random_uuid(), gen_random_uuid() FROM generate_series(0, 19999) g;
INSERT INTO tenants (id, slug, name, owner_email, tier, workflow, state, signup_id)
  SELECT tenant_id, 't' || n, 't' || n, 'ops@t' || n || '.example', 'pro', 'noop', 'provisioning', 'msg' || n FROM k;
INSERT INTO runs (id, tenant_id, workflow, state) SELECT run_id, tenant_id, 'noop', 'running' FROM k;
INSERT INTO steps (run_id, position, name, state, due_at, lease_owner, lease_token, attempts, started_at, attempt_started_at)
  SELECT run_id, p, 's' || p, CASE WHEN p = 0 THEN 'running' ELSE 'pending' END,
         CASE WHEN p = 0 THEN now() + interval '60 s' END, CASE WHEN p = 0 THEN 'w' END,
         CASE WHEN p = 0 THEN nextval('lease_tokens') END, CASE WHEN p = 0 THEN 1 ELSE 0 END,
         CASE WHEN p = 0 THEN now() END, CASE WHEN p = 0 THEN now() END
  FROM k, generate_series(0, 2) p;
VACUUM ANALYZE;

-- The two appends of vend-step alone.
\set b random(0, 199)
WITH u AS (SELECT k.tenant_id FROM k WHERE k.n >= :b * 100 AND k.n < :b * 100 + 100),
h AS (INSERT INTO history (tenant_id, at, kind, step, attempt, lease_token, actor, message, started_at)
  SELECT tenant_id, now(), 'step.succeeded', 's0', 1, 42, 'worker-1', 'step succeeded', now() FROM u)
INSERT INTO events (id, tenant_id, type, payload)
  SELECT gen_random_uuid(), tenant_id, 'tenant.step.succeeded',
   jsonb_build_object('tenant', jsonb_build_object('slug', 'acme-corporation', 'name', 'Acme Corporation', 'tier', 'pro', 'state', 'provisioning', 'account_id', '123456789012', 'endpoint', null),
                      'step', jsonb_build_object('name', 'deploy_stack', 'state', 'succeeded', 'attempts', 1, 'error', null))
  FROM u;

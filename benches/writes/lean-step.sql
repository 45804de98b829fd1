-- The least a durable step could write: one step-row update and one row that is both its history and its event.
\set b random(0, 199)
WITH u AS (
UPDATE steps s SET state = CASE WHEN s.due_at IS NULL THEN 'running' ELSE 'succeeded' END,
  due_at = CASE WHEN s.due_at IS NULL THEN now() + interval '60 s' END, finished_at = now(), lease_owner = NULL, updated_at = now()
FROM k WHERE k.n >= :b * 100 AND k.n < :b * 100 + 100 AND s.run_id = k.run_id AND s.position = 0
RETURNING k.tenant_id)
INSERT INTO events (id, tenant_id, type, payload)
  SELECT gen_random_uuid(), tenant_id, 'tenant.step.succeeded',
   jsonb_build_object('tenant', jsonb_build_object('slug', 'acme-corporation', 'name', 'Acme Corporation', 'tier', 'pro', 'state', 'provisioning', 'account_id', '123456789012', 'endpoint', null),
                      'step', jsonb_build_object('name', 'deploy_stack', 'state', 'succeeded', 'attempts', 1, 'error', null))
  FROM u;

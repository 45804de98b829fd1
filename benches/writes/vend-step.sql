-- One step as vend writes it: the finished step and the next one (a due_at change each, as a success and a claim), a history row, an outbox event.
\set b random(0, 199)
WITH u AS (
UPDATE steps s SET state = CASE WHEN s.due_at IS NULL THEN 'running' ELSE 'succeeded' END,
  due_at = CASE WHEN s.due_at IS NULL THEN now() + interval '60 s' END, finished_at = now(), lease_owner = NULL, updated_at = now()
FROM k WHERE k.n >= :b * 100 AND k.n < :b * 100 + 100 AND s.run_id = k.run_id AND s.position IN (0, 1)
RETURNING k.tenant_id, s.position),
h AS (INSERT INTO history (tenant_id, at, kind, step, attempt, lease_token, actor, message, started_at)
  SELECT tenant_id, now(), 'step.succeeded', 's0', 1, 42, 'worker-1', 'step succeeded', now() FROM u WHERE position = 0)
INSERT INTO events (id, tenant_id, type, payload)
  SELECT gen_random_uuid(), tenant_id, 'tenant.step.succeeded',
   jsonb_build_object('tenant', jsonb_build_object('slug', 'acme-corporation', 'name', 'Acme Corporation', 'tier', 'pro', 'state', 'provisioning', 'account_id', '123456789012', 'endpoint', null),
                      'step', jsonb_build_object('name', 'deploy_stack', 'state', 'succeeded', 'attempts', 1, 'error', null))
  FROM u WHERE position = 0;

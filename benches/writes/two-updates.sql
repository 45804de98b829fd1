-- The two step-row updates of vend-step alone.
\set b random(0, 199)
UPDATE steps s SET state = CASE WHEN s.due_at IS NULL THEN 'running' ELSE 'succeeded' END,
  due_at = CASE WHEN s.due_at IS NULL THEN now() + interval '60 s' END, finished_at = now(), lease_owner = NULL, updated_at = now()
FROM k WHERE k.n >= :b * 100 AND k.n < :b * 100 + 100 AND s.run_id = k.run_id AND s.position IN (0, 1);

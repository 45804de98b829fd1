-- A queue job as graphile_worker handles one: inserted (measured apart: queue-insert), locked by an update, deleted.
BEGIN;
WITH j AS (INSERT INTO jobs (task_identifier, payload) SELECT 'noop', '{}' FROM generate_series(1, 100) RETURNING id) SELECT min(id) AS lo, max(id) AS hi FROM j \gset
UPDATE jobs SET attempts = attempts + 1, locked_at = now(), locked_by = 'w' WHERE id BETWEEN :lo AND :hi;
DELETE FROM jobs WHERE id BETWEEN :lo AND :hi;
COMMIT;

-- What queue-job spends on the insert, which a drain does not do: subtract it.
WITH j AS (INSERT INTO jobs (task_identifier, payload) SELECT 'noop', '{}' FROM generate_series(1, 100) RETURNING id) SELECT min(id) AS lo, max(id) AS hi FROM j \gset

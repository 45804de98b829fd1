-- History records an attempt once, when it ends (succeeded, waiting, failed, or abandoned because its
-- lease expired or an operator rewound it), with the time it started. A row written at every claim as
-- well doubled the history the hot path wrote; the ops API still shows each attempt's start.
ALTER TABLE history ADD COLUMN started_at timestamptz;
-- When the current attempt started (every claim sets it): the start of an attempt that ends without a
-- worker writing its outcome, and of the one running now.
ALTER TABLE steps ADD COLUMN attempt_started_at timestamptz;

-- History is read per tenant in id order and by nothing else: one index does both.
ALTER TABLE history DROP CONSTRAINT history_pkey;
DROP INDEX history_tenant;
ALTER TABLE history ADD PRIMARY KEY (tenant_id, id);

-- A step running across this migration started its attempt at its last claim, which is the last time
-- its row was written (heartbeats only move due_at).
UPDATE steps SET attempt_started_at = updated_at WHERE state = 'running';

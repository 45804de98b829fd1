-- Failed steps by run: the tenants list filtered by current step or error code, and the bulk retry,
-- find failed tenants through it (in-flight steps are in steps_due). Rows enter it only when a step
-- fails, so the hot path does not pay for it.
CREATE INDEX steps_failed ON steps (run_id) WHERE state = 'failed';

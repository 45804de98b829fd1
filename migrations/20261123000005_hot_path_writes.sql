-- The engine's group commit writes history and events for hundreds of steps per statement. A foreign
-- key on these append-only tables costs a lookup and a row lock on the tenant for every row written;
-- they are written only by statements that have just fenced on the tenant's own step, and tenants are
-- never deleted, so the checks bought nothing.
ALTER TABLE history DROP CONSTRAINT history_tenant_id_fkey;
ALTER TABLE events DROP CONSTRAINT events_tenant_id_fkey;
-- Read by nothing (events are reached through deliveries); maintained on every event written.
DROP INDEX events_tenant;

-- Claims scan steps_due in due_at order and take the first due rows; that is only right if a step with
-- a due_at is one that can run. Every write keeps it so; this makes it a rule.
ALTER TABLE steps ADD CONSTRAINT steps_due_only_when_open
    CHECK (due_at IS NULL OR state IN ('pending', 'waiting', 'running'));

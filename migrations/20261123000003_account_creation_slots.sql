-- CreateAccount requests in flight, across every replica: AWS allows 5 per organization. A row is a
-- slot, taken before CreateAccount and released when await_account sees the request finish; a crash
-- keeps it (the request may well still be IN_PROGRESS at AWS).
CREATE TABLE account_creations (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX account_creations_open ON account_creations (started_at) WHERE finished_at IS NULL;

-- Steps queued for a capacity slot wait with their own reason, so a released slot wakes one of them.
ALTER TABLE steps DROP CONSTRAINT steps_wait_reason_check;
ALTER TABLE steps ADD CONSTRAINT steps_wait_reason_check
    CHECK (wait_reason IN ('poll', 'backoff', 'throttle', 'slot'));
CREATE INDEX steps_slot_waiters ON steps (due_at) WHERE wait_reason = 'slot';

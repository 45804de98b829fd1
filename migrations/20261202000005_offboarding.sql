-- Offboarding. A tenant's runs now include offboard runs; an offboard cancels the provisioning run it
-- interrupts, and a restore cancels the offboard run. A cancelled run is history: no step of it is
-- due, and it is never a tenant's current run.
ALTER TABLE runs DROP CONSTRAINT runs_state_check;
ALTER TABLE runs ADD CONSTRAINT runs_state_check
    CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled'));

-- CloseAccount requests vend made, across every replica: AWS lets an organization close at most 10 %
-- of its member accounts (10 to 1,000) per rolling 30 days. A row is taken before the call, so a
-- crash can only ever undercount AWS's remaining quota, never exceed it.
CREATE TABLE account_closures (
    tenant_id    uuid PRIMARY KEY REFERENCES tenants (id),
    account_id   text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_closures_requested ON account_closures (requested_at);

-- Fleet rollouts: a template, as it was when the rollout started, rolled out to every active silo
-- tenant in waves (a canary wave first). Each tenant's update is a run of the rollout workflow; the
-- driver reads its outcome from that run.
CREATE TABLE rollouts (
    id           uuid PRIMARY KEY,
    stack        text NOT NULL CHECK (stack IN ('tenant', 'baseline')),
    template     text NOT NULL,
    version      text NOT NULL,
    canary       int NOT NULL,
    wave_size    int NOT NULL,
    max_failures int NOT NULL,
    state        text NOT NULL CHECK (state IN ('running', 'paused', 'halted', 'completed', 'aborted')),
    actor        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rollout_tenants (
    rollout_id uuid NOT NULL REFERENCES rollouts (id),
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    wave       int NOT NULL,
    state      text NOT NULL CHECK (state IN ('pending', 'running', 'updated', 'failed', 'skipped')),
    run_id     uuid,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rollout_id, tenant_id)
);
CREATE INDEX rollout_tenants_open ON rollout_tenants (rollout_id, wave) WHERE state IN ('pending', 'running');

-- Drift: when each active tenant was last checked (the checker takes the longest-unchecked first,
-- across replicas), and what it found. A finding stays open until a check no longer sees it.
CREATE TABLE drift_checks (
    tenant_id  uuid PRIMARY KEY REFERENCES tenants (id),
    checked_at timestamptz NOT NULL
);

CREATE TABLE drift_findings (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    resource    text NOT NULL,
    detail      text NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    repaired_at timestamptz,
    resolved_at timestamptz
);
CREATE UNIQUE INDEX drift_findings_open ON drift_findings (tenant_id, resource) WHERE resolved_at IS NULL;
CREATE INDEX drift_findings_open_time ON drift_findings (detected_at DESC) WHERE resolved_at IS NULL;

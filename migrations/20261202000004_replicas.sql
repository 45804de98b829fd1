-- The vend processes running now, so they can split the management account's rate budgets between
-- them (each takes 1/n). A replica that stops heartbeating drops out after a few seconds.
CREATE TABLE replicas (
    worker_id text PRIMARY KEY,
    seen_at   timestamptz NOT NULL DEFAULT now()
);

-- vend's durable state. Forward-only: never edit this file once applied; add a new migration.

-- Monotonic fencing tokens for leases on steps and deliveries.
CREATE SEQUENCE lease_tokens;

CREATE TABLE tenants (
    -- UUIDv7: time-ordered, so `id DESC` is "newest first" and doubles as the pagination cursor.
    id          uuid PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    owner_email text NOT NULL,
    tier        text NOT NULL CHECK (tier IN ('free', 'pro', 'enterprise')),
    workflow    text NOT NULL,
    state       text NOT NULL CHECK (state IN ('pending', 'provisioning', 'active', 'failed', 'offboarding', 'closed')),
    -- External ids, saved the moment they are known (account id, CreateAccount request id, stack ids, ...).
    resources   jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- The signup webhook-id that created the tenant: a replay of it is not a slug conflict.
    signup_id   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tenants_state_id ON tenants (state, id DESC);

-- Idempotency of the signup webhook: the first answer to a webhook-id is replayed verbatim.
CREATE TABLE signup_requests (
    webhook_id  text PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    status      smallint NOT NULL,
    response    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One execution of a workflow for a tenant.
CREATE TABLE runs (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    workflow    text NOT NULL,
    state       text NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runs_tenant ON runs (tenant_id, created_at DESC);

-- Every step of a run has a row from the start, so ops see the whole workflow.
-- `due_at` is the one scheduling column: for pending/waiting steps it is when they may run; for a running
-- step it is when its lease expires (a crashed worker's step becomes due again by itself). Finished steps
-- and steps not yet reached have NULL.
CREATE TABLE steps (
    run_id         uuid NOT NULL REFERENCES runs (id),
    position       int NOT NULL,
    name           text NOT NULL,
    state          text NOT NULL CHECK (state IN ('pending', 'running', 'waiting', 'succeeded', 'failed')),
    wait_reason    text CHECK (wait_reason IN ('poll', 'backoff', 'throttle')),
    due_at         timestamptz,
    attempts       int NOT NULL DEFAULT 0,
    throttles      int NOT NULL DEFAULT 0,
    polls          int NOT NULL DEFAULT 0,
    lease_owner    text,
    lease_token    bigint,
    last_error     text,
    last_error_code text,
    started_at     timestamptz,
    finished_at    timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, position),
    UNIQUE (run_id, name)
);
CREATE INDEX steps_due ON steps (due_at) WHERE due_at IS NOT NULL;

-- Append-only: every transition, attempt, error and operator action.
CREATE TABLE history (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind        text NOT NULL,
    step        text,
    attempt     int,
    lease_token bigint,
    actor       text,
    message     text NOT NULL,
    detail      jsonb
);
CREATE INDEX history_tenant ON history (tenant_id, id);

-- Transactional outbox: an event is written with the state change that caused it.
CREATE TABLE events (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    type        text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_tenant ON events (tenant_id, created_at);

-- Where events go: progress webhooks and the EventBridge bus, synced from configuration at start.
CREATE TABLE endpoints (
    id              text PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('webhook', 'eventbridge')),
    target          text NOT NULL,
    disabled_at     timestamptz,
    disabled_reason text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per (event, endpoint); `due_at` works as for steps (lease expiry while being sent).
CREATE TABLE deliveries (
    event_id     uuid NOT NULL REFERENCES events (id),
    endpoint_id  text NOT NULL REFERENCES endpoints (id),
    state        text NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'disabled')),
    attempts     int NOT NULL DEFAULT 0,
    due_at       timestamptz,
    lease_token  bigint,
    last_status  int,
    last_error   text,
    delivered_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, endpoint_id)
);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX deliveries_state ON deliveries (state, created_at DESC);

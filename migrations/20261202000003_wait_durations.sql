-- How long asynchronous AWS operations took in this organization (CreateAccount, stacks, ...), so
-- every replica schedules its looks around what AWS does here rather than around a tuned interval.
CREATE TABLE wait_durations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL,
    seconds     double precision NOT NULL CHECK (seconds >= 0),
    observed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wait_durations_recent ON wait_durations (kind, id DESC);

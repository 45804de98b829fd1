-- The creation budget counts CreateAccount requests by when they started, over a sliding window.
CREATE INDEX account_creations_started ON account_creations (started_at);

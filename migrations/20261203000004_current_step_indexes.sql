-- The tenants list at fleet scale (benches/listing.rs, 1,000,000 tenants).
--
-- Filters on the current step walk these in the listing's order (newest run first) and stop at a
-- page. "Current" is in flight (a due time) or failed: a step that runs at once and succeeds gets an
-- entry while pending and running, like steps_due; finished steps leave them.
CREATE INDEX steps_current ON steps (run_id DESC) WHERE due_at IS NOT NULL OR state = 'failed';
CREATE INDEX steps_current_name ON steps (name, run_id DESC) WHERE due_at IS NOT NULL OR state = 'failed';
-- Only steps that have met an error are here.
CREATE INDEX steps_current_error ON steps (last_error_code, run_id DESC)
    WHERE last_error_code IS NOT NULL AND (due_at IS NOT NULL OR state = 'failed');
-- steps_failed (run_id) WHERE state = 'failed' is kept: the bulk retry walks it.

-- A tier is a filter of its own: a rare one (enterprise among a free pool) must not scan the table.
CREATE INDEX tenants_tier_id ON tenants (tier, id DESC);

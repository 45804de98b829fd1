-- A freed CreateAccount slot goes to the tenant that has waited longest (by when its step started),
-- not to whichever waiter's fallback timer is nearest.
DROP INDEX steps_slot_waiters;
CREATE INDEX steps_slot_waiters ON steps (started_at) WHERE wait_reason = 'slot';

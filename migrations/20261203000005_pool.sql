-- The shared pool (free and pro tenants): one row, written by whichever tenant's prepare_pool step
-- holds its lease. `state` is what vend knows of the pool's account and stack (the account id, an
-- outstanding CreateAccount, the stack's outputs, the usage plan of each tier, the wildcard domain)
-- and `version` the digest of the configuration it was last made ready for.
CREATE TABLE pool (
    id          text PRIMARY KEY CHECK (id = 'pool'),
    state       jsonb NOT NULL DEFAULT '{}',
    version     text,
    lease_until timestamptz NOT NULL DEFAULT '-infinity',
    -- The tenant whose step holds the lease: its own retry (after a crash) may take it again at once.
    holder      uuid,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO pool (id) VALUES ('pool');

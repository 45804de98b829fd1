-- Tenants per state without counting the table: the console's tenants page and /metrics read them at
-- any fleet size. A trigger appends +1/-1 rows rather than updating a counter, so concurrent signups
-- never wait on each other's row lock; vend folds the deltas into tenant_counts every second
-- (db::tenants::fold_counts). A reader sums both tables in one snapshot, so a count is always exact.
CREATE TABLE tenant_counts (
    state text PRIMARY KEY,
    n     bigint NOT NULL
);

CREATE TABLE tenant_count_deltas (
    state text NOT NULL,
    delta smallint NOT NULL
);

CREATE FUNCTION tenant_count_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO tenant_count_deltas VALUES (OLD.state, -1);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO tenant_count_deltas VALUES (NEW.state, 1);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_counted AFTER INSERT OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenant_count_delta();
CREATE TRIGGER tenants_counted_state AFTER UPDATE OF state ON tenants
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION tenant_count_delta();

-- Creating the triggers locked out writers until this commits, so this count and the deltas agree.
INSERT INTO tenant_counts (state, n) SELECT state, count(*) FROM tenants GROUP BY state;

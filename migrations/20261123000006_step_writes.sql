-- Every step transition rewrites its row, and each unique index on steps makes that a uniqueness check
-- over the key's earlier versions. Step names are unique per workflow when the workflow is loaded, and
-- the rows of a run are written once from it; lookups by name go through the primary key's run_id.
ALTER TABLE steps DROP CONSTRAINT steps_run_id_name_key;

-- A run's state changes twice in its life and no index covers it: room on the page keeps those updates
-- in place (HOT) instead of adding index entries.
ALTER TABLE runs SET (fillfactor = 80);

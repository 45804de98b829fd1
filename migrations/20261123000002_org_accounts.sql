-- An index of the organization's accounts, refreshed by one replica at a time from ListAccounts.
-- It lets create_account check "does the tenant's account already exist?" with one indexed query
-- instead of paging through every account of the organization on every signup.
CREATE TABLE org_accounts (
    account_id  text PRIMARY KEY,
    email       text NOT NULL,
    name        text NOT NULL,
    status      text NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX org_accounts_email ON org_accounts (lower(email));

-- Periodic jobs that only one replica should run per interval.
CREATE TABLE periodic_jobs (
    name        text PRIMARY KEY,
    last_run_at timestamptz NOT NULL
);

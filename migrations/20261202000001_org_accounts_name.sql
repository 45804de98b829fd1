-- An existing account that has a tenant's account name (not only its root e-mail) collides with it.
CREATE INDEX org_accounts_name ON org_accounts (name);

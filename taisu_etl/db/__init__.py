"""The ledger: schema, engines, migrations and batched operations."""

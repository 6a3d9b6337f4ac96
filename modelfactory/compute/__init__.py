"""The compute pool: tenants, jobs, scheduling policies, workers with leases, the usage ledger."""

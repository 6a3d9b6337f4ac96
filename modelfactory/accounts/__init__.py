"""Accounts: tenants, API keys (hashed), the authenticated principal, quotas and the usage ledger.

One `authenticate()` (auth.py) serves every server: the control plane, `mf serve` and `mf serve-llm`. This
package depends only on store, config and errors; the pool (compute) and the servers depend on it.
"""

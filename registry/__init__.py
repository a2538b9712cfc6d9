"""The versioned truth in Redis: tenants, hashed keys, adapter and prompt versions, releases,
aliases, flags, audit; plus the in-process snapshot the gateway serves from and the pure rollout
functions.

Knows nothing of HTTP.
"""

"""The HTTP edge: OpenAI-compatible tenant API, admin API, metrics, and the engine pool."""

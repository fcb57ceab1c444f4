"""What lives in Redis: sessions (and their provenance index), the audit log, approval tickets, API keys,
rate limits, and the embedded Redis server."""

"""Everything that generates tokens: engine adapters, the pool, the embedded model. No HTTP routes, no rails."""

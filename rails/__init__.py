"""Everything that judges content: rails and their pipeline. No HTTP, no engine imports."""

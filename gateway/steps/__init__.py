"""Step orchestration: one agent step from admission through inbound rails, the engine, tool policies and
output rails to its commit (Chat Completions and Responses share it), with SSE streaming."""

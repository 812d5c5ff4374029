"""`foundry serve`: a local model behind the Anthropic Messages API, with its caches.

protocol (request validation and response shapes), schemas (the JSON schemas a client
sends: their depth, the structured output's), stream (the SSE event sequence), queue
(one model, many clients), response_cache (L2), context (the small-window policy), stats,
session (the ledger), service (what runs a request), app (the ASGI routes), run (uvicorn);
stats_client reads a running serve's /cache/stats (for the dashboard and foundry mcp).
The in-memory KV caches (L1), the memory guard and cancellation live in the local backend.
"""

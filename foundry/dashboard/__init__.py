"""`foundry dashboard`: a local web page over the ledger (builds, live progress, costs) and a
running `foundry serve`'s cache stats.

readonly (the ledger opened read-only), builds (the builds list and a build's page), costs
(the costs report, as `foundry costs` computes it), live (Server-Sent Events of a running
build), serve_stats (a serve's /cache/stats, fetched server-side), app (the routes and
security headers), run (uvicorn). starlette and uvicorn are imported only by app and run,
and only when the command runs, so `foundry --help` stays fast.
"""

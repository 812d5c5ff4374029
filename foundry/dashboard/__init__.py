"""`foundry dashboard`: a local web page over the ledger (builds, live progress, costs) and a
running `foundry serve`'s cache stats.

readonly (the ledger opened read-only), builds (the builds list and a build's page), costs
(the costs report, as `foundry costs` computes it), live (Server-Sent Events of a running
build), app (the routes and security headers), run (uvicorn); a serve's /cache/stats comes
through foundry.server.stats_client. starlette and uvicorn are imported only by app and
run, and only when the command runs, so `foundry --help` stays fast.
"""

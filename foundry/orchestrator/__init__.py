"""The orchestrated build: phases, the agent loop, the workspace tools and the build summary.

Light imports only: `import foundry.cli` must stay fast.
"""

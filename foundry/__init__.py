"""foundry: a build orchestrator for autonomous LLM builds, with prompt caching done properly."""

__version__ = "0.1.0"

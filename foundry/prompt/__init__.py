"""The orchestrator prompt: the template (loading, the Jinja sandbox), the boundary split,
token counting and the analysis behind `foundry analyze-prompt`."""

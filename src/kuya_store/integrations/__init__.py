"""Framework integrations; each module imports its framework, the core never does."""

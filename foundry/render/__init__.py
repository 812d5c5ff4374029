"""Human views of command results: rich tables and text; the data comes from the core,
already computed."""

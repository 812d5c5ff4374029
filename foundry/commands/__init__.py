"""One module per command; each imports only light modules at the top."""

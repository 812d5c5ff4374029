"""Claude through the official `anthropic` SDK: the client and its retries (client), the
stream accumulator (stream), where cache breakpoints go (layout), and failures (errors).

The only package that imports the SDK, and only inside functions."""

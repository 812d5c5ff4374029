"""OpenAI-compatible Chat Completions servers (vLLM, SGLang, llama.cpp, Ollama, LM Studio,
mlx_lm.server, OpenRouter, OpenAI) through the official `openai` SDK: the backend and its
retries (client), the server's address, models and tokenizer (endpoint), requests and tool
calls both ways (messages), the streamed reply and its usage (stream), failures (errors).

The only package that imports the SDK, and only inside functions."""

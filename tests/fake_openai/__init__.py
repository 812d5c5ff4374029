"""A local OpenAI-compatible Chat Completions server over real HTTP (server.py), and the
real mlx_lm.server started the way foundry loads mlx (mlx_lm_server.py)."""

from tests.fake_openai.server import FakeOpenAI

__all__ = ["FakeOpenAI"]

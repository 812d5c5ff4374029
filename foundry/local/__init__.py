"""Everything mlx: the runtime (OpenBLAS preload), the engine, chat rendering, tool-call
parsing, the verified prefix store, model directories and GGUF import.

This is the only package that imports mlx or mlx_lm, and only inside functions, so
importing it stays cheap.
"""

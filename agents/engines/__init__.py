"""LLM engines: one batched interface over transformers, vLLM and OpenAI-compatible servers."""

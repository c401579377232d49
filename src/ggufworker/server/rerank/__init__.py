"""The rerank API (Jina's and Cohere's shape, as llama-server and vLLM serve it)."""

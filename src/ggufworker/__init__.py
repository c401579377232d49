"""ggufworker: a GGUF-first quantized LLM runtime.

Get a model by name (registry download or SafeTensors conversion), run it quantized on
llama.cpp, and serve it to OpenAI-compatible clients with continuous batching.
"""

__version__ = "0.1.0"

"""LoRA adapters on the server: which adapters each served base carries (``--lora``), the
``BASE:NAME`` model ids, and the adapter routes (vLLM's ``/v1/load_lora_adapter`` and
``/v1/unload_lora_adapter``, llama-server's ``/lora-adapters``)."""

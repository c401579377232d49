"""The model lifecycle API in llama-server's router names: ``/models`` (status of every known
model), ``/models/load``, ``/models/unload``, ``/models/sse``, plus ``/props`` and ``/slots``;
and the web chat page at ``/ui``."""

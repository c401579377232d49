"""Talking to models from the terminal: a running ggufworker server over HTTP, or the engine in
this process. ``ggufworker run``, ``ps``, ``show``, ``rm``, ``stop`` and ``cp`` are thin
wrappers over these modules.
"""

"""The model registry: models.yaml, name resolution, verified downloads into the cache.

``pull(name)`` returns the path of a finished, verified GGUF file; ``load_registry()`` the
validated models.yaml.
"""

from ggufworker.registry.pull import UnknownModelError, cached, pull, resolve
from ggufworker.registry.schema import (
    Architecture,
    ModelEntry,
    Registry,
    default_registry_path,
    load_registry,
)

__all__ = [
    "Architecture",
    "ModelEntry",
    "Registry",
    "UnknownModelError",
    "cached",
    "default_registry_path",
    "load_registry",
    "pull",
    "resolve",
]

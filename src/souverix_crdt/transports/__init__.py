"""Transport adapters: frames between replicas (memory, TCP, NATS, file bundles)."""

from .base import DEFAULT_MAX_FRAME as DEFAULT_MAX_FRAME
from .base import Transport as Transport

__all__ = ["DEFAULT_MAX_FRAME", "Transport"]

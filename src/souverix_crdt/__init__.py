"""souverix-crdt: replicated fleet state for a federation of Souverix control planes.

The names below are the public API; submodules hold the rest. See ``docs/`` for the concepts.
"""

from .codec import DecodeLimits as DecodeLimits
from .conflicts import ConflictLog as ConflictLog
from .conflicts import ConflictRecord as ConflictRecord
from .document import COLLECTIONS as COLLECTIONS
from .document import Change as Change
from .document import FleetState as FleetState
from .document import ScopeState as ScopeState
from .document import WriteOp as WriteOp
from .document import WriteResult as WriteResult
from .errors import SouverixError as SouverixError
from .hlc import Clock as Clock
from .hlc import Timestamp as Timestamp
from .limits import DEFAULT_LIMITS as DEFAULT_LIMITS
from .limits import Limits as Limits
from .lww import Register as Register
from .lww import Strategy as Strategy
from .scope import Autonomy as Autonomy
from .scope import Scope as Scope
from .scope import Tier as Tier

__version__ = "0.1.0"

__all__ = [
    "COLLECTIONS",
    "DEFAULT_LIMITS",
    "Autonomy",
    "Change",
    "Clock",
    "ConflictLog",
    "ConflictRecord",
    "DecodeLimits",
    "FleetState",
    "Limits",
    "Register",
    "Scope",
    "ScopeState",
    "SouverixError",
    "Strategy",
    "Tier",
    "Timestamp",
    "WriteOp",
    "WriteResult",
    "__version__",
]

"""The federation layer: several planes in one process, and the views of a whole fleet.

* :mod:`~souverix_crdt.federation.manager` — :class:`FederationManager`, the in-process
  federation (the demo, tests, a Digital Twin's model);
* :mod:`~souverix_crdt.federation.views`, :mod:`~souverix_crdt.federation.render` — the Global
  Fleet View and the regional view, as data, a terminal tree and JSON;
* :mod:`~souverix_crdt.federation.inventory`, :mod:`~souverix_crdt.federation.status` — node
  records and link status values;
* :mod:`~souverix_crdt.federation.demo` — the brief's federation, end to end.

The manager's public names are re-exported here: ``from souverix_crdt.federation import
FederationManager`` works as before the layer had its own package.
"""

from .manager import *  # noqa: F403  (the manager's __all__ is this package's public face)
from .manager import __all__ as __all__

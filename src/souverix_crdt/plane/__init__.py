"""One control plane as a process: its topology and config, its keys, its sessions and schedule.

* :mod:`~souverix_crdt.plane.topology` — the federation's description (planes, authority, sync
  policy): what every plane process reads to know its links and how to run them;
* :mod:`~souverix_crdt.plane.keyring` and :mod:`~souverix_crdt.plane.keydir` — key directories:
  bootstrap, load, delegate, revoke, rotate;
* :mod:`~souverix_crdt.plane.coordinator` and :mod:`~souverix_crdt.plane.backoff` — per-link
  sync policy: modes, frequencies, retries;
* :mod:`~souverix_crdt.plane.peer` — ``souverix-crdt peer run``: one plane's replica, served
  and synced until stopped.

This layer sits above the replica, the sync protocol and the transports, and below the
federation layer (:mod:`souverix_crdt.federation`) and the faces (CLI, dashboard). The topology
lives here rather than in the federation layer because a plane process needs it on its own
machine, with no federation manager around.
"""

"""The bundle carrier for air-gapped links: how the federation manager moves files across them.

:class:`SignedBundleCarrier` adapts the signed bundle transport (``transports/bundle.py``: a
signed manifest, all-or-nothing import, signed receipts) to the manager's
:class:`~souverix_crdt.federation.manager.BundleCarrier` interface. It is the only carrier: a
receipt settles sync debt, so it must be signed by the plane it names, and only signed bundles and
receipts are.
"""

from __future__ import annotations

from pathlib import Path

from souverix_crdt.replica import Replica
from souverix_crdt.scope import Scope
from souverix_crdt.transports import bundle
from souverix_crdt.transports.bundle import BundleInfo, BundleReceipt, ImportResult

__all__ = ["SignedBundleCarrier", "default_carrier"]


class SignedBundleCarrier:
    """Carries signed bundles and receipts of :mod:`souverix_crdt.transports.bundle`."""

    def export_bundle(
        self, replica: Replica, path: Path, *, peer: str, peer_scope: Scope
    ) -> BundleInfo:
        """Write a signed bundle of what ``peer`` lacks."""
        return bundle.export_bundle(replica, path, peer=peer, peer_scope=peer_scope)

    def import_bundle(self, replica: Replica, path: Path) -> ImportResult:
        """Verify a whole bundle, then apply it."""
        return bundle.import_bundle(replica, path)

    def export_receipt(self, replica: Replica, path: Path, *, peer: str) -> BundleReceipt:
        """Write a signed receipt of this replica's frontiers for ``peer``."""
        return bundle.export_receipt(replica, path, for_peer=peer)

    def import_receipt(self, replica: Replica, path: Path) -> BundleReceipt:
        """Verify a receipt and settle the sync debt towards its signer."""
        return bundle.import_receipt(replica, path)


def default_carrier() -> SignedBundleCarrier:
    """The carrier a federation manager uses when given none."""
    return SignedBundleCarrier()

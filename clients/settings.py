"""A node's settings: the process's (``FEDCREDIT_*``) and, per node, Flower's ``node_config``."""

from __future__ import annotations

from collections.abc import Mapping

from federation import protocol as P
from policies.settings import FedCreditSettings


class NodeSettings(FedCreditSettings):
    """Where a node keeps its own audit log when its node config names none."""

    def node_audit_url(self, institution: str, node_config: Mapping[str, str] | None = None) -> str:
        """The node config's ``audit-db``, else ``node-<institution>.db`` under ``<var>/audit``.

        Never ``DATABASE_URL``: that is the coordinator's log, and nodes keep their own."""
        explicit = (node_config or {}).get(P.NODE_AUDIT_DB, "")
        return explicit or f"sqlite:///{self.var_dir / 'audit' / f'node-{institution}.db'}"

"""Which engine adapters no release references any more, and for how long (pure).

Every gateway sees the same engine-reported names and the same registry, so every gateway reaches
the same verdict; the grace period (longer than a snapshot may be stale) means no gateway still
routes to an adapter when it is unloaded, and a rollback target (`last_good`) stays referenced.
Only names loragate gives (`lg-...`, registry.models.AdapterVersion.engine_name) are touched.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from registry.errors import RegistryError
from registry.refs import parse_ref
from registry.state import RegistryState

PREFIX = "lg-"


class Orphans:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._since: dict[str, float] = {}  # engine name -> first seen unreferenced

    def due(self, held: Iterable[str], referenced: Collection[str], now: float) -> list[str]:
        """The held names unreferenced for at least the grace period, oldest first."""
        orphans = {n for n in held if n.startswith(PREFIX) and n not in referenced}
        self._since = {n: t for n, t in self._since.items() if n in orphans}
        for name in orphans:
            self._since.setdefault(name, now)
        return sorted((n for n, t in self._since.items() if now - t >= self.grace_s),
                      key=lambda n: (self._since[n], n))  # fmt: skip


def referenced_engine_names(state: RegistryState) -> set[str]:
    """Engine names of the adapters a release an alias can route to (stable, canary) or roll
    back to (`last_good`) uses; engine names are immutable per version, so they map back."""
    names: set[str] = set()
    for (tenant, _), alias in state.aliases.items():
        for rid in (alias.stable, alias.canary, *alias.last_good):
            release = state.releases.get((tenant, rid)) if rid is not None else None
            if release is None or release.adapter is None:
                continue
            try:
                name, version = parse_ref(release.adapter)
            except RegistryError:
                continue
            adapter = state.adapters.get((tenant, name, version))
            if adapter is not None:
                names.add(adapter.engine_name)
    return names

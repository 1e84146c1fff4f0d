"""pgoutput protocol messages (protocol versions 1–2) and their parser.

Data classes describe the messages the pipeline handles one at a time (relations, types,
transaction boundaries, truncates, logical messages). Insert/Update/Delete are parsed here
too for tools and tests, but the hot path never does: it decodes their tuples columnwise in
:mod:`dbmazz.source.columnar` straight from the raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    type_modifier: int
    #: Part of the replica identity (flag bit 1). Under REPLICA IDENTITY FULL every column is.
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    """A ``R`` message: the shape of a table as the walsender describes it."""

    oid: int
    namespace: str
    name: str
    #: ``d`` default, ``n`` nothing, ``f`` full, ``i`` index.
    replica_identity: str
    columns: tuple[RelationColumn, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def identity_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.is_key)

"""What work costs: device seconds measured on real runs, and estimates made from them.

A job's *cost* is how much work it is in units of one 128x128 image (its family says; by
default its pixels, times its frames and the denoising steps it runs). Every forward pass a
worker records adds its jobs' units and its device seconds to the throughput of its batch key
on its device, so an estimate is the units a manifest asks for times the seconds a unit took
on real runs: of the same batch key first, else of the same kind and model at another size,
else the family's benchmark figure (``FamilySpec.unit_seconds``), else unknown. Torch-free.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, String, bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from jobs.catalog import Catalog
from jobs.models import Throughput, UTCDateTime, utcnow
from jobs.registry import default_cost


@functools.cache
def _add_pass_stmt(dialect: str) -> Any:
    """An upsert adding a pass to its key's throughput, built once per dialect."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(Throughput).values(
        batch_key=bindparam("p_key", type_=String()), device=bindparam("p_device", type_=String()),
        jobs=bindparam("p_jobs", type_=BigInteger()), units=bindparam("p_units", type_=Float()),
        seconds=bindparam("p_seconds", type_=Float()),
        updated_at=bindparam("p_now", type_=UTCDateTime()))
    return stmt.on_conflict_do_update(
        index_elements=[Throughput.batch_key, Throughput.device],
        set_={"jobs": Throughput.jobs + stmt.excluded.jobs,
              "units": Throughput.units + stmt.excluded.units,
              "seconds": Throughput.seconds + stmt.excluded.seconds,
              "updated_at": stmt.excluded.updated_at})


def record_pass(session: Session, batch_key: str, device: str, jobs: int, units: float,
                seconds: float, now: datetime | None = None) -> None:
    """Add one forward pass to the throughput of ``batch_key`` on ``device``: one upsert, so
    workers recording the same key at once add up instead of colliding."""
    conn = session.connection()
    conn.execute(_add_pass_stmt(conn.dialect.name),
                 {"p_key": batch_key, "p_device": device, "p_jobs": jobs, "p_units": units,
                  "p_seconds": seconds, "p_now": now or utcnow()})


def record_passes(session: Session, passes: Iterable[tuple[str, str, int, float, float]]
                  ) -> None:
    """Add many passes (batch key, device, jobs, units, seconds): one upsert per key and device,
    since throughput only adds up."""
    totals: dict[tuple[str, str], tuple[int, float, float]] = {}
    for key, device, jobs, units, seconds in passes:
        n, u, t = totals.get((key, device), (0, 0.0, 0.0))
        totals[(key, device)] = (n + jobs, u + units, t + seconds)
    for (key, device), (n, u, t) in totals.items():
        record_pass(session, key, device, n, u, t)


@dataclass
class Group:
    """The jobs of one batch key in a manifest, and what they are estimated to cost."""

    kind: str
    model: str
    batch_key: str
    jobs: int
    units: float
    device_seconds: float | None  # None: unknown (no run of this model and kind yet)
    basis: str  # where the rate comes from

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["units"] = round(self.units, 3)
        if self.device_seconds is not None:
            out["device_seconds"] = round(self.device_seconds, 3)
        return out


@dataclass
class Estimate:
    groups: list[Group]
    workers: int

    @property
    def jobs(self) -> int:
        return sum(g.jobs for g in self.groups)

    @property
    def device_seconds(self) -> float:
        """The known part: groups without an estimate count nothing."""
        return sum(g.device_seconds or 0.0 for g in self.groups)

    @property
    def unknown(self) -> list[str]:
        return sorted({f"{g.kind} jobs of {g.model}" for g in self.groups
                       if g.device_seconds is None})

    @property
    def wall_seconds(self) -> float:
        """On ``workers`` workers sharing the work evenly: a lower bound."""
        return self.device_seconds / max(1, self.workers)

    def as_dict(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "device_seconds": round(self.device_seconds, 3),
                "workers": self.workers, "wall_seconds": round(self.wall_seconds, 3),
                "unknown": self.unknown, "groups": [g.as_dict() for g in self.groups]}


def job_cost(catalog: Catalog, kind: str, params: Mapping[str, Any]) -> float:
    model = params.get("model", "")
    family = catalog.family(model) if model in catalog.models else None
    return (family.cost if family is not None else default_cost)(kind, params)


def rates(session: Session, catalog: Catalog, keys: Iterable[tuple[str, str, str]]
          ) -> dict[str, tuple[float | None, str]]:
    """Seconds per unit for each (batch key, kind, model), with where the figure comes from."""
    keys = list(keys)
    rows = list(session.execute(select(Throughput)).scalars()) if keys else []
    out: dict[str, tuple[float | None, str]] = {}
    for batch_key, kind, model in keys:
        same = [r for r in rows if r.batch_key == batch_key and r.units > 0]
        if same:  # the device this key ran on most recently
            row = max(same, key=lambda r: r.updated_at)
            out[batch_key] = (row.seconds / row.units,
                              f"measured: {row.jobs} jobs on {row.device}")
            continue
        prefix = f"{kind}:{model}"
        alike = [r for r in rows if r.batch_key.split(":")[:2] == prefix.split(":") and r.units > 0]
        if alike:
            units = sum(r.units for r in alike)
            out[batch_key] = (sum(r.seconds for r in alike) / units,
                              f"measured: {sum(r.jobs for r in alike)} {kind} jobs of {model} "
                              "at other sizes")
            continue
        family = catalog.family(model) if model in catalog.models else None
        if family is not None and family.unit_seconds is not None:
            out[batch_key] = (family.unit_seconds, "benchmark figure (no run yet)")
        else:
            out[batch_key] = (None, "unknown: no run of this model and kind yet")
    return out


def estimate(session: Session, catalog: Catalog, jobs: Sequence[tuple[str, str, Mapping[str, Any]]],
             workers: int = 1) -> Estimate:
    """What (kind, batch key, params) jobs are estimated to cost, grouped by batch key."""
    groups: dict[str, Group] = {}
    for kind, batch_key, params in jobs:
        group = groups.get(batch_key)
        if group is None:
            group = groups[batch_key] = Group(kind, str(params.get("model", "")), batch_key, 0,
                                              0.0, None, "")
        group.jobs += 1
        group.units += job_cost(catalog, kind, params)
    found = rates(session, catalog, ((g.batch_key, g.kind, g.model) for g in groups.values()))
    for group in groups.values():
        rate, group.basis = found[group.batch_key]
        group.device_seconds = None if rate is None else rate * group.units
    return Estimate(sorted(groups.values(), key=lambda g: (g.kind, g.model, g.batch_key)),
                    workers)

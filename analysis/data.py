"""The one typed survival-data object used everywhere in trialfed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis.errors import UserError


def is_numeric(values: NDArray[Any]) -> bool:
    """True when a covariate column is numeric (used as is), False when categorical."""
    return values.dtype.kind in "biuf"


@dataclass(frozen=True)
class SurvivalData:
    """Right-censored time-to-event rows of one site for one endpoint (ADTTE PARAMCD).

    Parameters
    ----------
    time : ndarray of float64, shape (n,)
        Analysis value AVAL (time to event or censoring), finite and >= 0.
    event : ndarray of bool, shape (n,)
        True when the event was observed (ADTTE ``CNSR == 0``), False when censored.
    covariates : mapping of str to ndarray, each shape (n,)
        Subject-level variables: every ADSL column plus ``SITE`` (site id) and ``COUNTRY``
        (site country). Numeric columns are float64; categorical ones are object arrays of str.

    Notes
    -----
    This object never leaves a site; only aggregates computed from it do.
    """

    time: NDArray[np.float64]
    event: NDArray[np.bool_]
    covariates: Mapping[str, NDArray[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        time = np.asarray(self.time, dtype=np.float64)
        event = np.asarray(self.event, dtype=bool)
        if time.ndim != 1 or event.shape != time.shape:
            raise ValueError(
                f"time and event must be 1-d arrays of one length; got shapes "
                f"{time.shape} and {event.shape}"
            )
        if not np.all(np.isfinite(time)) or np.any(time < 0):
            bad = int(np.flatnonzero(~np.isfinite(time) | (time < 0))[0])
            raise ValueError(f"time must be finite and >= 0; row {bad} has {time[bad]!r}")
        covariates: dict[str, NDArray[Any]] = {}
        for name, values in self.covariates.items():
            column = np.asarray(values)
            if column.shape != time.shape:
                raise ValueError(
                    f"covariate {name!r} has shape {column.shape}, expected {time.shape}"
                )
            kind = np.float64 if is_numeric(column) else object
            covariates[name] = read_only(column.astype(kind, copy=False))
        object.__setattr__(self, "time", read_only(time))
        object.__setattr__(self, "event", read_only(event))
        object.__setattr__(self, "covariates", covariates)

    @property
    def n(self) -> int:
        """Number of subjects."""
        return int(self.time.shape[0])

    @property
    def n_events(self) -> int:
        """Number of observed events."""
        return int(self.event.sum())

    def column(self, name: str) -> NDArray[Any]:
        """Return covariate ``name``; a clear UserError names the available ones otherwise."""
        try:
            return self.covariates[name]
        except KeyError:
            available = ", ".join(sorted(self.covariates)) or "none"
            raise UserError(
                f"variable {name!r} is not available; available variables: {available}"
            ) from None

    def subset(self, mask: NDArray[np.bool_]) -> SurvivalData:
        """Rows where ``mask`` is True, as a new SurvivalData."""
        return SurvivalData(
            time=self.time[mask],
            event=self.event[mask],
            covariates={k: v[mask] for k, v in self.covariates.items()},
        )

    @classmethod
    def concatenate(cls, parts: list[SurvivalData]) -> SurvivalData:
        """Stack the rows of several parts (used by tests to build pooled oracles)."""
        if not parts:
            raise ValueError("concatenate needs at least one part")
        names = set(parts[0].covariates)
        return cls(
            time=np.concatenate([p.time for p in parts]),
            event=np.concatenate([p.event for p in parts]),
            covariates={k: np.concatenate([p.covariates[k] for p in parts]) for k in names},
        )


def read_only(values: NDArray[Any]) -> NDArray[Any]:
    """A read-only view: the arrays may be the site table's own columns (no copy is made)."""
    view = values.view()
    view.flags.writeable = False
    return view

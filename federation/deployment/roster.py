"""The coordinator's roster: the sites enrolled in the federation, by site id.

Flower knows sites only as public keys and node ids. The roster (``roster.json`` in the
coordinator's state folder) says which site each key belongs to: site id, country, key
fingerprint (``SHA256:...`` as ``ssh-keygen -lf site.pub`` prints it, so a site can read its own
fingerprint to the coordinator over the phone), enrolment time and Flower node id. Runs expect
the roster's sites unless a plan names its own (``[study] sites``); every message names sites
by site id. Revoked sites leave the roster and are kept, with the time, under ``revoked``.

Writes take ``roster.lock`` and replace the file atomically, so ``enroll``, ``revoke`` and a run
recording its last contact never lose each other's changes.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from analysis.errors import UserError
from federation.deployment.state import ROSTER_FILE

SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
COUNTRY = re.compile(r"^[A-Z]{2}$")


def fingerprint(public_key_line: str) -> str:
    """OpenSSH's fingerprint of a public key line: ``SHA256:`` + unpadded base64 of the blob."""
    parts = public_key_line.split()
    if len(parts) < 2:
        raise UserError("not an OpenSSH public key line (expected 'TYPE BASE64 [comment]')")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise UserError("the public key's base64 part cannot be decoded") from None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def key_fingerprint(path: Path) -> str:
    """The fingerprint of the public key in ``path`` (``site.pub``)."""
    return fingerprint(path.read_text(encoding="ascii", errors="replace").strip())


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class SiteEntry:
    """One enrolled site."""

    site_id: str
    country: str
    fingerprint: str
    public_key: str
    enrolled_at: str
    node_id: int
    last_answer_at: str | None = None
    last_run: int | None = None
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def check_site(site_id: str, country: str) -> None:
    """Raise :class:`UserError` unless the site id and the country code are well formed."""
    if not SITE_ID.match(site_id):
        raise UserError(
            f"--site must be a site id of letters, digits, '_', '.', '-' (at most 64, as in "
            f"site.toml [site] id); got {site_id!r}"
        )
    if not COUNTRY.match(country):
        raise UserError(
            f"--country must be a two-letter ISO code such as JP or KR; got {country!r}"
        )


class Roster:
    """The roster file of one coordinator state folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / ROSTER_FILE

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"sites": [], "revoked": []}
        try:
            data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UserError(f"{self.path}: the roster is not valid JSON ({exc})") from None
        data.setdefault("sites", [])
        data.setdefault("revoked", [])
        return data

    def sites(self) -> list[SiteEntry]:
        """The enrolled sites in site-id order."""
        return sorted((SiteEntry(**s) for s in self._read()["sites"]), key=lambda s: s.site_id)

    def revoked(self) -> list[dict[str, Any]]:
        return list(self._read()["revoked"])

    def get(self, site_id: str) -> SiteEntry:
        for site in self.sites():
            if site.site_id == site_id:
                return site
        known = ", ".join(s.site_id for s in self.sites()) or "none"
        raise UserError(f"site {site_id!r} is not on the roster (enrolled: {known})")

    def by_node(self) -> dict[int, str]:
        """Flower node id -> site id."""
        return {s.node_id: s.site_id for s in self.sites()}

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, Any]]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "roster.lock").open("a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            data = self._read()
            yield data
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            tmp.replace(self.path)

    def check_new(self, site_id: str, country: str, key_line: str) -> str:
        """Validate an enrolment before it reaches Flower; returns the key's fingerprint."""
        check_site(site_id, country)
        print_ = fingerprint(key_line)
        for gone in self.revoked():
            if gone.get("fingerprint") == print_:
                raise UserError(
                    f"this key ({print_}) was revoked on {gone.get('revoked_at')} (site "
                    f"{gone.get('site_id')}); Flower never accepts a revoked key again: the site "
                    "makes a new key pair (`trialfed site keygen`) and sends its site.pub"
                )
        for site in self.sites():
            if site.site_id == site_id:
                raise UserError(
                    f"site {site_id} is already enrolled (key {site.fingerprint}); revoke it "
                    "first to enrol a new key"
                )
            if site.fingerprint == print_:
                raise UserError(f"this key ({print_}) is already enrolled as site {site.site_id}")
        return print_

    def add(self, site_id: str, country: str, key_line: str, node_id: int) -> SiteEntry:
        """Record an enrolment (after Flower registered the key as ``node_id``)."""
        entry = SiteEntry(
            site_id=site_id,
            country=country,
            fingerprint=fingerprint(key_line),
            public_key=key_line.strip(),
            enrolled_at=now_iso(),
            node_id=node_id,
        )
        with self._editing() as data:
            data["sites"] = [s for s in data["sites"] if s["site_id"] != site_id]
            data["sites"].append(asdict(entry))
        return entry

    def remove(self, site_id: str) -> SiteEntry:
        """Take a site off the roster; it is kept under ``revoked`` with the time."""
        entry = self.get(site_id)
        with self._editing() as data:
            data["sites"] = [s for s in data["sites"] if s["site_id"] != site_id]
            data["revoked"].append({**asdict(entry), "revoked_at": now_iso()})
        return entry

    def record_answers(self, run_id: int, answered: list[dict[str, Any]]) -> None:
        """Note the last run each site answered, and the version it reported (if any)."""
        by_id = {str(s.get("id")): s for s in answered}
        with self._editing() as data:
            for site in data["sites"]:
                info = by_id.get(site["site_id"])
                if info is None:
                    continue
                site["last_answer_at"] = now_iso()
                site["last_run"] = run_id
                version = info.get("version") or info.get("trialfed")
                if version:
                    site["version"] = str(version)

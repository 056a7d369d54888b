"""Certificates and keys for a real deployment: the coordinator's CA and TLS server certificate,
and the site key pairs that Flower's SuperNode authentication expects.

Formats (Flower 1.42):

- TLS: PEM certificates and PEM (PKCS#8) keys, given to ``flower-superlink`` as
  ``--ssl-ca-certfile``, ``--ssl-certfile`` and ``--ssl-keyfile`` and to each
  ``flower-supernode`` as ``--root-certificates``.
- Site authentication: an elliptic-curve key on a NIST curve (P-384 here), the private key in
  OpenSSH format (``flower-supernode --auth-supernode-private-key`` reads it with
  ``load_ssh_private_key``), the public key as one OpenSSH line (``flwr supernode register``
  reads it with ``load_ssh_public_key``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from analysis.errors import UserError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
SITE_KEY = "site.key"
SITE_PUB = "site.pub"
LOCAL_HOSTS = ("localhost", "127.0.0.1")
CA_DAYS = 5 * 365
SERVER_DAYS = 825


@dataclass(frozen=True)
class CertFiles:
    """The files of a coordinator certificate folder."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, folder: Path) -> CertFiles:
        """The standard file names inside ``folder``."""
        return cls(folder / CA_CERT, folder / CA_KEY, folder / SERVER_CERT, folder / SERVER_KEY)

    def check_server(self) -> None:
        """Raise :class:`UserError` unless the files the SuperLink needs exist."""
        for path in (self.ca_cert, self.server_cert, self.server_key):
            if not path.is_file():
                raise UserError(
                    f"{path}: not found; create the certificates with "
                    f"`trialfed coordinator certs --host NAME --out {path.parent}`"
                )


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san_entries(hosts: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in [*hosts, *LOCAL_HOSTS]:
        name = host.strip()
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if any(c in name for c in " /:@") or name.startswith("."):
                raise UserError(
                    f"--host must be a host name or an IP address; got {name!r}"
                ) from None
            entries.append(x509.DNSName(name))
    return entries


def _new_ca(now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trialfed federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, "trialfed coordinator CA"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def create_certificates(hosts: list[str], out: Path) -> CertFiles:
    """Create (or reuse) a CA in ``out`` and issue a TLS server certificate for ``hosts``.

    Parameters
    ----------
    hosts : list of str
        Host names and IP addresses the sites use to reach the coordinator; ``localhost`` and
        ``127.0.0.1`` are always added (the SuperLink's own ServerApp process connects locally).
    out : Path
        Output folder. An existing ``ca.crt`` + ``ca.key`` pair there is reused, so that adding a
        host name later does not invalidate the CA copies the sites already hold.

    Returns
    -------
    CertFiles
        Paths of ``ca.crt``, ``ca.key`` (0600), ``server.crt`` and ``server.key`` (0600).
    """
    files = CertFiles.in_dir(out)
    sans = _san_entries(hosts)
    now = dt.datetime.now(dt.UTC)
    out.mkdir(parents=True, exist_ok=True)
    if files.ca_cert.is_file() and files.ca_key.is_file():
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise UserError(f"{files.ca_key}: expected the EC key written by trialfed")
    elif files.ca_cert.exists() or files.ca_key.exists():
        raise UserError(f"{out}: holds only one of {CA_CERT}, {CA_KEY}; remove it or add the other")
    else:
        ca_key, ca_cert = _new_ca(now)
        _write_private(files.ca_key, _pem_key(ca_key))
        files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    key = ec.generate_private_key(ec.SECP384R1())
    first = sans[0]
    common_name = str(first.value)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(files.server_key, _pem_key(key))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def server_names(cert_path: Path) -> list[str]:
    """The DNS names and IP addresses in a certificate's subject alternative names."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


def create_site_keys(out: Path) -> tuple[Path, Path]:
    """Create a site's authentication key pair: ``site.key`` (0600) and ``site.pub``.

    Refuses to overwrite an existing private key: the coordinator has enrolled its public half.
    """
    private, public = out / SITE_KEY, out / SITE_PUB
    if private.exists():
        raise UserError(
            f"{private}: already exists; the coordinator may have enrolled its public key. "
            "Remove it first to make a new pair (and ask the coordinator to enrol the new one)"
        )
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public.write_bytes(line + b" trialfed-site\n")
    return private, public


def check_site_key(path: Path) -> None:
    """Raise :class:`UserError` unless ``path`` is an OpenSSH EC private key readable by Flower."""
    if not path.is_file():
        raise UserError(f"{path}: site key not found; create it with `trialfed site keygen`")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not an OpenSSH private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UserError(f"{path}: the site key must be an elliptic-curve (NIST P-384) key")


def check_public_key(path: Path) -> None:
    """Raise :class:`UserError` unless ``path`` is an OpenSSH EC public key on a NIST curve."""
    if not path.is_file():
        raise UserError(f"{path}: public key not found")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not an OpenSSH public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UserError(f"{path}: a site public key must be an elliptic-curve key")


def public_line(private_key: Path) -> str:
    """The OpenSSH public key line of the site key in ``private_key``."""
    check_site_key(private_key)
    key = serialization.load_ssh_private_key(private_key.read_bytes(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )

"""The key and certificate that sign C2PA manifests.

Looked up in this order:
1. $MOTION_TRANSFER_C2PA_CERT and $MOTION_TRANSFER_C2PA_KEY: PEM files, the certificate chain
   (signing certificate first, then intermediates) and its private key; the algorithm is
   $MOTION_TRANSFER_C2PA_ALG (es256 by default) and $MOTION_TRANSFER_C2PA_TSA an optional
   RFC 3161 timestamp server URL;
2. `signing-cert.pem` and `signing-key.pem` in the config folder
   ($MOTION_TRANSFER_CONFIG, else $XDG_CONFIG_HOME/motion-transfer, else ~/.config/motion-transfer);
3. a self-signed chain made on first use and kept in `<config folder>/self-signed.pem`: an
   ES256 root, a signing certificate it issues (C2PA refuses a certificate that signs itself)
   and the signing key, in one file readable only by its owner.

A self-signed credential proves that the file has not changed since it was signed (integrity),
not who signed it (identity): verifiers report its signer as untrusted. A certificate from a CA
on the C2PA trust list is needed for the latter.
"""
from __future__ import annotations

import datetime
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

logger = logging.getLogger(__name__)

PRIVATE_KEY_MARKER = b"-----BEGIN PRIVATE KEY-----"
ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")


@dataclass(frozen=True)
class Credential:
    chain: bytes        # PEM certificates, signing certificate first
    key: bytes          # PEM private key
    algorithm: str
    timestamp_url: str | None
    self_signed: bool
    origin: str         # where it came from (logs)


def config_dir() -> Path:
    if os.environ.get("MOTION_TRANSFER_CONFIG"):
        return Path(os.environ["MOTION_TRANSFER_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "motion-transfer"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"C2PA {what} {str(path)!r} cannot be read ({err.strerror}): "
                        "expected a PEM file") from None


def load_credential() -> Credential:
    """The configured credential, or the self-signed one (created on first use)."""
    algorithm = os.environ.get("MOTION_TRANSFER_C2PA_ALG", "es256").lower()
    if algorithm not in ALGORITHMS:
        raise UserError(f"MOTION_TRANSFER_C2PA_ALG={algorithm!r}: expected one of {list(ALGORITHMS)}")
    tsa = os.environ.get("MOTION_TRANSFER_C2PA_TSA") or None
    cert, key = os.environ.get("MOTION_TRANSFER_C2PA_CERT"), os.environ.get("MOTION_TRANSFER_C2PA_KEY")
    if bool(cert) != bool(key):
        raise UserError("set both MOTION_TRANSFER_C2PA_CERT and MOTION_TRANSFER_C2PA_KEY (PEM files), "
                        "or neither")
    if cert:
        return Credential(_read(Path(cert), "certificate"), _read(Path(key), "key"), algorithm, tsa,
                          False, f"$MOTION_TRANSFER_C2PA_CERT ({cert})")
    folder = config_dir()
    if (folder / "signing-cert.pem").is_file():
        return Credential(_read(folder / "signing-cert.pem", "certificate"),
                          _read(folder / "signing-key.pem", "key"), algorithm, tsa, False,
                          str(folder / "signing-cert.pem"))
    path = folder / "self-signed.pem"
    if not path.is_file():
        try:
            _write_self_signed(path)
        except OSError as err:
            raise UserError(f"cannot create the self-signed C2PA credential in {str(folder)!r} "
                            f"({err.strerror}): make that folder writable, set MOTION_TRANSFER_CONFIG to a "
                            "writable folder, or set MOTION_TRANSFER_C2PA_CERT and MOTION_TRANSFER_C2PA_KEY") from None
        logger.info("C2PA: created a self-signed signing certificate in %s (it proves integrity, "
                    "not identity; see the README to configure your own)", path)
    chain, marker, key = _read(path, "credential").partition(PRIVATE_KEY_MARKER)
    if not marker:
        raise UserError(f"{str(path)!r} holds no private key: delete it to make a new one")
    return Credential(chain, marker + key, "es256", tsa, True, str(path))


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "motion-transfer, self-signed"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject, issuer, public_key, issuer_key, ca: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = dict(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                 data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                 encipher_only=False, decipher_only=False)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(x509.KeyUsage(**usage), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if not ca:  # C2PA wants an end-entity certificate with a signing purpose
        builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                                         critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       issuer_key.public_key()), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def _write_self_signed(path: Path) -> None:
    """An ES256 root, the signing certificate it issues and its key, in one file that appears
    complete or not at all (concurrent first runs each write a whole one; the last wins, and
    files signed with the others stay valid)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    root_key, signing_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _certificate(_name("motion-transfer local root"), _name("motion-transfer local root"),
                        root_key.public_key(), root_key, ca=True)
    signing = _certificate(_name("motion-transfer generated-media signer"), root.subject,
                           signing_key.public_key(), root_key, ca=False)
    pem = serialization.Encoding.PEM
    chain = signing.public_bytes(pem) + root.public_bytes(pem)
    key = signing_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, chain + key)
    finally:
        os.close(fd)
    os.replace(tmp, path)

"""A throwaway certificate authority for loopback TLS tests, made with the openssl CLI.

The device must verify what it talks to; these tests need a server certificate that
a client can be told to trust (``SSL_CERT_FILE``) or not. Python 3.13 checks
certificates strictly (``VERIFY_X509_STRICT``), so both carry key identifiers.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TestPki:
    ca: Path
    """The CA certificate, PEM: what a client trusts."""
    cert: Path
    """The server's certificate for 127.0.0.1 and localhost, PEM."""
    key: Path
    """The server's private key, PEM."""


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def make_pki(folder: Path) -> TestPki:
    """A CA and a server certificate it signed, valid for one day, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=hark test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (folder / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "1",
        "-CAcreateserial", "-extfile", "server.ext", "-out", "server.pem")  # fmt: skip
    return TestPki(folder / "ca.pem", folder / "server.pem", folder / "server.key")

"""The secret's password goes only to a server whose certificate chains to the RDS bundle,
names the host, and asks for SCRAM: a fake server that fails any of these gets nothing."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg.conninfo import make_conninfo

from flag_scheduler.aws.secrets import RDS_CA_BUNDLE, DatabaseTarget, connect_database
from flag_scheduler.aws.settings import DatabaseSettings
from flag_scheduler.errors import DatabaseLoginRefused, FlagSchedulerError
from flag_scheduler.store.connection import connect
from tests.aws.conftest import create_secret

PASSWORD = "tls-test-Pa55word"
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
AUTH_CLEARTEXT_PASSWORD = 3


# --- certificates ------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    folder: Path,
    stem: str,
    subject: str,
    *,
    san: x509.GeneralName | None,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
) -> tuple[Issued, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=san is None, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    issued = Issued(folder / f"{stem}.crt", folder / f"{stem}.key")
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issued.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return issued, cert, key


@dataclass(frozen=True)
class Certificates:
    test_ca: Path  # a CA the client can be told to trust
    self_signed_wrong_name: Issued  # what an impostor has: its own certificate, another name
    wrong_name: Issued  # signed by test_ca, for another host
    right_name: Issued  # signed by test_ca, for 127.0.0.1 and localhost


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("certs")
    ca, ca_cert, ca_key = _issue(folder, "ca", "flag-scheduler test CA", san=None)
    wrong_dns = x509.DNSName("db.attacker.example")
    self_signed, _, _ = _issue(folder, "self", "db.attacker.example", san=wrong_dns)
    wrong, _, _ = _issue(
        folder, "wrong", "db.attacker.example", san=wrong_dns, issuer=(ca_cert, ca_key)
    )
    right, _, _ = _issue(
        folder,
        "right",
        "127.0.0.1",
        san=x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        issuer=(ca_cert, ca_key),
    )
    return Certificates(
        test_ca=ca.cert, self_signed_wrong_name=self_signed, wrong_name=wrong, right_name=right
    )


# --- a server that speaks just enough PostgreSQL to ask for a password ----------------------


@dataclass
class FakePostgres:
    """Accepts TLS, then asks every client for its password in clear text."""

    identity: Issued
    listener: socket.socket = field(init=False)
    events: list[str] = field(default_factory=list)
    passwords: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(self.identity.cert, self.identity.key)
        self._stopped = threading.Event()
        self._conversations = threading.Condition()
        self._open = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def settle(self) -> None:
        """Wait until the server has finished with every client it accepted."""
        with self._conversations:
            assert self._conversations.wait_for(lambda: self._open == 0, timeout=10)

    def stop(self) -> None:
        self.settle()
        self._stopped.set()
        self._thread.join(5)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            with self._conversations:
                self._open += 1
            with client:
                client.settimeout(5)
                try:
                    self._converse(client)
                except (OSError, ssl.SSLError, struct.error) as exc:
                    self.events.append(f"client gave up: {type(exc).__name__}")
            with self._conversations:
                self._open -= 1
                self._conversations.notify_all()

    def _converse(self, client: socket.socket) -> None:
        _, code = struct.unpack("!II", _read(client, 8))
        if code == GSSENC_REQUEST:
            client.sendall(b"N")
            _, code = struct.unpack("!II", _read(client, 8))
        if code != SSL_REQUEST:
            self.events.append("cleartext startup")
            return
        client.sendall(b"S")
        with warnings.catch_warnings():
            # A client refusing our certificate makes the handshake fail: that is the point.
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                tls = self._context.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.events.append(f"handshake refused: {type(exc).__name__}")
                return
        with tls:
            (length,) = struct.unpack("!I", _read(tls, 4))
            _read(tls, length - 4)  # protocol version, user, database ...
            self.events.append("startup")
            tls.sendall(b"R" + struct.pack("!II", 8, AUTH_CLEARTEXT_PASSWORD))
            kind = tls.recv(1)
            if kind != b"p":
                self.events.append(f"no password ({kind!r})")
                return
            (length,) = struct.unpack("!I", _read(tls, 4))
            self.passwords.append(_read(tls, length - 4).rstrip(b"\0").decode())
            self.events.append("password received")


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("peer closed")
        data += chunk
    return data


@pytest.fixture
def impostor(certificates: Certificates) -> Iterator[FakePostgres]:
    server = FakePostgres(certificates.self_signed_wrong_name)
    yield server
    server.stop()


def _target(port: int, host: str = "127.0.0.1") -> DatabaseTarget:
    return DatabaseTarget(host=host, port=port, user="scheduler", password=PASSWORD, dbname="f")


# --- the tests ------------------------------------------------------------------------------


def test_the_old_sslmode_require_would_have_sent_the_password(impostor: FakePostgres) -> None:
    """The figure before the fix: encryption without verification hands over the secret."""
    old = make_conninfo(
        host="127.0.0.1",
        port=str(impostor.port),
        user="scheduler",
        password=PASSWORD,
        dbname="f",
        sslmode="require",
    )
    with pytest.raises(FlagSchedulerError):  # the impostor hangs up once it has the password
        connect(old, connect_timeout=5)
    assert impostor.passwords == [PASSWORD]


@pytest.mark.usefixtures("aws")
def test_the_secret_path_refuses_an_impostor_before_sending_any_credential(
    impostor: FakePostgres,
) -> None:
    arn = create_secret(
        {"host": "127.0.0.1", "port": impostor.port, "username": "u", "password": PASSWORD}
    )
    with pytest.raises(DatabaseLoginRefused, match="certificate verify failed") as caught:
        connect_database(DatabaseSettings(db_secret_arn=arn))
    assert PASSWORD not in str(caught.value)
    impostor.settle()
    assert impostor.passwords == []
    assert "password received" not in impostor.events
    assert "startup" not in impostor.events  # not even the user name crossed
    assert impostor.events
    assert all(event.startswith("handshake refused") for event in impostor.events)


def test_a_trusted_certificate_for_another_host_is_refused(certificates: Certificates) -> None:
    """verify-full, not verify-ca: a certificate any trusted CA issued is not enough."""
    server = FakePostgres(certificates.wrong_name)
    try:
        target = replace(_target(server.port), sslrootcert=str(certificates.test_ca))
        with pytest.raises(DatabaseLoginRefused, match="does not match host name"):
            connect(target.conninfo(), connect_timeout=5)
    finally:
        server.stop()
    assert server.passwords == []


def test_a_genuine_server_asking_for_a_cleartext_password_is_refused(
    certificates: Certificates,
) -> None:
    """require_auth: even the right server never gets the password in clear (nor MD5)."""
    server = FakePostgres(certificates.right_name)
    try:
        target = replace(_target(server.port), sslrootcert=str(certificates.test_ca))
        with pytest.raises(DatabaseLoginRefused, match="authentication method requirement"):
            connect(target.conninfo(), connect_timeout=5)
    finally:
        server.stop()
    assert "startup" in server.events  # TLS was accepted: the refusal is about the method
    assert server.passwords == []


# --- the shipped bundle -----------------------------------------------------------------


def test_the_shipped_bundle_holds_only_amazon_rds_cas_and_amazon_roots() -> None:
    certs = x509.load_pem_x509_certificates(RDS_CA_BUNDLE.read_bytes())
    rds = [c for c in certs if _org(c) == ("Amazon Web Services, Inc.", "Amazon RDS")]
    roots = [c for c in certs if _org(c) == ("Amazon", "")]
    assert len(rds) + len(roots) == len(certs)
    assert {c.subject.rfc4514_string() for c in roots} == {
        f"CN=Amazon Root CA {n},O=Amazon,C=US" for n in range(1, 5)
    }
    now = datetime.datetime.now(datetime.UTC)
    current = [c for c in rds if c.not_valid_before_utc <= now < c.not_valid_after_utc]
    # RDS's current CAs (rsa2048-g1, rsa4096-g1, ecc384-g1) for each region.
    assert len(current) >= 80
    assert any("us-east-1 Root CA RSA2048 G1" in c.subject.rfc4514_string() for c in current)
    for cert in [*rds, *roots]:
        issuer = next(c for c in certs if c.subject == cert.issuer)
        cert.verify_directly_issued_by(issuer)  # raises unless the signature checks out


def _org(cert: x509.Certificate) -> tuple[str, str]:
    def first(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return first(NameOID.ORGANIZATION_NAME), first(NameOID.ORGANIZATIONAL_UNIT_NAME)

"""Rebuild the CA bundle the function verifies its database with, from files you downloaded.

The bundle is the Amazon RDS global bundle (`global-bundle.pem` from the RDS user guide's
"Using SSL/TLS to encrypt a connection to a DB instance" page) followed by the Amazon
Trust Services roots (Amazon Root CA 1-4) that RDS Proxy's certificates chain to. Every
certificate is parsed and checked to be one of those before anything is written.
Usage: `make rds-ca-bundle GLOBAL_BUNDLE=path/to/global-bundle.pem [AMAZON_ROOTS=file.pem]`;
without AMAZON_ROOTS the roots already in the shipped bundle are kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

BUNDLE = Path(__file__).resolve().parents[1] / "handler/flag_scheduler/aws/rds-ca-bundle.pem"
RDS = ("Amazon Web Services, Inc.", "Amazon RDS")
AMAZON_ROOTS = {f"Amazon Root CA {n}" for n in range(1, 5)}


def _name(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def is_rds(cert: x509.Certificate) -> bool:
    org = (_name(cert, NameOID.ORGANIZATION_NAME), _name(cert, NameOID.ORGANIZATIONAL_UNIT_NAME))
    return org == RDS


def is_amazon_root(cert: x509.Certificate) -> bool:
    return _name(cert, NameOID.COMMON_NAME) in AMAZON_ROOTS and cert.issuer == cert.subject


def _pem_blocks(text: str) -> list[str]:
    end = "-----END CERTIFICATE-----"
    return [block.strip() + "\n" + end + "\n" for block in text.split(end)[:-1]]


def build(global_bundle: str, roots: str) -> str:
    """The new bundle text; raises SystemExit naming the first certificate that does not fit."""
    rds_blocks = _pem_blocks(global_bundle)
    for block in rds_blocks:
        cert = x509.load_pem_x509_certificate(block.encode())
        if not is_rds(cert):
            raise SystemExit(f"not an Amazon RDS certificate: {cert.subject.rfc4514_string()}")
    root_blocks = [
        block
        for block in _pem_blocks(roots)
        if is_amazon_root(x509.load_pem_x509_certificate(block.encode()))
    ]
    names = {
        _name(x509.load_pem_x509_certificate(b.encode()), NameOID.COMMON_NAME) for b in root_blocks
    }
    if not rds_blocks or names != AMAZON_ROOTS or len(root_blocks) != len(AMAZON_ROOTS):
        raise SystemExit("need RDS certificates and each of Amazon Root CA 1-4 once")
    return "".join(rds_blocks + root_blocks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("global_bundle", type=Path, help="the downloaded global-bundle.pem")
    parser.add_argument("--amazon-roots", type=Path, help="a PEM file holding Amazon Root CA 1-4")
    args = parser.parse_args()
    roots = (args.amazon_roots or BUNDLE).read_text()
    text = build(args.global_bundle.read_text(), roots)
    BUNDLE.write_text(text)
    print(f"wrote {BUNDLE} ({text.count('BEGIN CERTIFICATE')} certificates)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

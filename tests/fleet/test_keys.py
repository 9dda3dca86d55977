"""The deployment's keys (`s2fleet.keys`): a server certificate that the CA signed for the
names a SuperNode dials, and SuperNode key pairs in the formats Flower reads."""

from __future__ import annotations

import ipaddress
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from s2fleet.keys import main, node, tls


def test_the_server_certificate_is_signed_by_the_ca_for_every_host(tmp_path):
    ca_path, cert_path, key_path = tls(tmp_path, ("fleet.example.org", "127.0.0.1"))
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fleet.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_a_node_key_pair_is_p384_in_openssh_format(tmp_path):
    private_path, public_path = node(tmp_path / "dev")
    private = serialization.load_ssh_private_key(private_path.read_bytes(), None)
    public = serialization.load_ssh_public_key(public_path.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public.curve, ec.SECP384R1)  # type: ignore[union-attr]
    assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600


def test_the_cli_writes_and_names_the_files(tmp_path, capsys):
    assert main(["node", str(tmp_path / "k" / "dev1")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "k" / "dev1"), str(tmp_path / "k" / "dev1.pub")]
    assert main(["tls", str(tmp_path / "pki"), "--host", "localhost"]) == 0
    assert sorted(p.name for p in (tmp_path / "pki").iterdir()) == ["ca.pem", "server.key", "server.pem"]

"""The domains view: DNS targets from FORGE_DOMAIN and certificate states from Caddy's records."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from forge.api.domains import certificate_state, dns_target, tls_mode
from forge.proxy.caddy import base_config

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("host", "domain", "want"),
    [
        ("shop.example.org", "apps.example.com", "CNAME → hello.apps.example.com"),
        ("hello.apps.example.com", "apps.example.com", "wildcard A/AAAA record *.apps.example.com"),
        ("hello.localhost", "localhost", "nothing to set"),
        ("shop.example.org", "localhost", "A/AAAA record → this server's public address"),
    ],
    ids=["custom-cname", "default-wildcard", "local-default", "custom-on-localhost"],
)
def test_dns_target(host: str, domain: str, want: str) -> None:
    """A custom domain CNAMEs to APP.DOMAIN; APP.DOMAIN needs the wildcard; localhost needs nothing."""
    assert want in dns_target("hello", host, domain)


@pytest.mark.parametrize("mode", ["off", "internal", "on-demand"])
def test_tls_mode_is_read_back_from_the_generated_caddy_config(mode: str) -> None:
    """The mode forge up gave Caddy is what the view reads from its config."""
    conf = base_config(
        "127.0.0.1:8000",
        "unix//tmp/x.sock",
        tls_mode=mode,
        ask_url="http://127.0.0.1:1/ask",
        hosts_dir="/tmp/h",
    )
    assert tls_mode(conf) == mode


def _cert(path: Path, host: str, not_after: dt.datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_after - dt.timedelta(days=7))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(
    ("mode", "days", "state", "words"),
    [
        (None, None, "unknown", "not on this machine"),
        ("off", None, "none", "TLS is off"),
        ("on-demand", None, "pending", "ACME CA on the first HTTPS request, once DNS points here"),
        ("internal", 30, "issued", "valid until 2026-07-01"),
        ("on-demand", -1, "expired", "expired 2026-05-31"),
    ],
    ids=["no-records", "tls-off", "not-yet", "issued", "expired"],
)
def test_certificate_state(
    tmp_path: Path, mode: str | None, days: int | None, state: str, words: str
) -> None:
    """Each state of a host's certificate, from Caddy's storage layout."""
    if days is not None:
        _cert(
            tmp_path / "acme-v02" / "a.example.org" / "a.example.org.crt",
            "a.example.org",
            NOW + dt.timedelta(days=days),
        )
    got = certificate_state("a.example.org", mode, tmp_path, NOW.timestamp())
    assert got["state"] == state and words in got["message"], got

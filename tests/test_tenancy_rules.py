"""The tenancy rules as pure functions: the egress policy (tenancy/egress.py) on URLs and
resolved addresses, and secret grants (tenancy/grants.py). test_attacks.py shows the same
refusals through the API, the worker and real connections; these pin each rule's edges."""

from __future__ import annotations

import pytest

from talon.config import EgressSettings, SecretGrant, TenancySettings
from talon.tenancy.egress import EgressDenied, EgressPolicy
from talon.tenancy.grants import SecretGrants, SecretNotGranted

pytestmark = pytest.mark.fast

STRICT = EgressPolicy.from_settings(EgressSettings())  # the default: https, public addresses


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://mcp.example.com/mcp", "scheme 'http' is not allowed (allowed: https)"),
        ("https:///mcp", "the URL has no host"),
        ("https://user:pw@mcp.example.com/", "credentials in the URL are not allowed"),
        ("https://mcp.example.com:99999/", "not a valid URL"),
        ("https://169.254.169.254/computeMetadata/v1/", "is link-local"),
        ("https://[::ffff:169.254.169.254]/", "169.254.169.254 is link-local"),
        ("https://127.0.0.1:8091/mcp", "is a loopback address"),
        ("https://[::1]/", "is a loopback address"),
        ("https://10.0.0.5/", "is a private address"),
        ("https://100.64.0.1/", "is a private address"),  # carrier-grade NAT
        ("https://0.0.0.0/", "is not a unicast address"),
        ("https://224.0.0.1/", "is not a unicast address"),
    ],
)
def test_the_default_policy_refuses(url: str, reason: str) -> None:
    with pytest.raises(EgressDenied, match=reason.replace("(", r"\(").replace(")", r"\)")):
        STRICT.check_url(url)


def test_the_default_policy_allows_public_https_names_and_addresses() -> None:
    STRICT.check_url("https://mcp.example.com/mcp")
    STRICT.check_url("HTTPS://MCP.EXAMPLE.COM./mcp")  # case and a trailing dot do not matter
    STRICT.check_url("https://8.8.8.8/")
    STRICT.check_address("2001:4860:4860::8888")


def test_loopback_and_private_need_their_own_switches() -> None:
    local = EgressPolicy.from_settings(
        EgressSettings(allowed_schemes=["http", "HTTPS"], allow_loopback=True)
    )
    local.check_url("http://127.0.0.1:8091/mcp")
    with pytest.raises(EgressDenied, match="private"):
        local.check_url("http://192.168.1.10/")
    private = EgressPolicy.from_settings(EgressSettings(allow_private=True))
    private.check_url("https://192.168.1.10/")
    with pytest.raises(EgressDenied, match="loopback"):
        private.check_url("https://127.0.0.1/")
    # Neither opens the metadata server.
    for policy in (local, private):
        with pytest.raises(EgressDenied, match="link-local"):
            policy.check_address("169.254.169.254")


def test_an_allowed_cidr_opens_exactly_its_range() -> None:
    vpc = EgressPolicy.from_settings(EgressSettings(allowed_cidrs=["10.8.0.0/16", "169.254.0.5"]))
    vpc.check_url("https://10.8.3.4/mcp")
    vpc.check_address("169.254.0.5")
    with pytest.raises(EgressDenied, match="private"):
        vpc.check_url("https://10.9.0.1/mcp")
    with pytest.raises(EgressDenied, match="link-local"):
        vpc.check_address("169.254.169.254")


def test_allowed_hosts_match_exactly_or_by_subdomain_wildcard() -> None:
    listed = EgressPolicy.from_settings(
        EgressSettings(allowed_hosts=["api.openai.com", "*.mcp.example.com."])
    )
    listed.check_url("https://api.openai.com/v1")
    listed.check_url("https://stripe.mcp.example.com/mcp")
    listed.check_url("https://a.b.mcp.example.com/mcp")
    for url in ("https://mcp.example.com/", "https://openai.com/", "https://evilmcp.example.com/",
                "https://api.openai.com.evil.test/"):  # fmt: skip
        with pytest.raises(EgressDenied, match="not in the allowed hosts"):
            listed.check_url(url)


GRANTS = SecretGrants.from_settings(
    TenancySettings(
        secret_grants={
            "acme": SecretGrant(
                env=["ACME_*", "STRIPE_KEY"],
                secrets=["projects/p/secrets/acme-*", "projects/p/secrets/crm"],
            ),
        },
    )
)


@pytest.mark.parametrize(
    "ref",
    [
        {"env": "ACME_HUBSPOT"},
        {"env": "STRIPE_KEY"},
        {"secret": "projects/p/secrets/acme-stripe"},
        {"secret": "projects/p/secrets/crm/versions/3"},  # a version of a granted secret
    ],
)
def test_a_namespace_resolves_what_was_granted_to_it(ref: dict[str, str]) -> None:
    GRANTS.check("acme", ref)


@pytest.mark.parametrize(
    ("namespace", "ref", "reason"),
    [
        ("acme", {"env": "STRIPE_KEY_2"}, "environment variable STRIPE_KEY_2 is not granted"),
        ("acme", {"env": "OPENAI_API_KEY"}, "environment variable OPENAI_API_KEY"),
        ("acme", {"secret": "projects/p/secrets/crm-admin"}, "secret projects/p/secrets/crm-admin"),
        ("acme", {"secret": "projects/q/secrets/acme-x"}, "is not granted to namespace 'acme'"),
        ("globex", {"env": "ACME_HUBSPOT"}, "is not granted to namespace 'globex'"),
    ],
)
def test_anything_else_is_refused_naming_it(
    namespace: str, ref: dict[str, str], reason: str
) -> None:
    with pytest.raises(SecretNotGranted, match=reason):
        GRANTS.check(namespace, ref)


def test_the_platform_key_goes_only_to_the_listed_base_urls() -> None:
    assert GRANTS.is_platform_key(None) and GRANTS.is_platform_key({"env": "OPENAI_API_KEY"})
    assert not GRANTS.is_platform_key({"env": "ACME_OPENAI"})
    GRANTS.check_platform_key_url(None)  # the provider's own endpoint
    GRANTS.check_platform_key_url("https://api.openai.com/v1/")  # a trailing slash is the same
    with pytest.raises(SecretNotGranted, match="give this profile its own apiKeyFrom"):
        GRANTS.check_platform_key_url("https://model.attacker.test/v1")

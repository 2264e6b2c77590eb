"""OIDC verification of Pub/Sub pushes and Cloud Tasks callbacks against a local stand-in for
Google's certificate endpoint: certificates are fetched once per Cache-Control max-age, not
per request; the audience, account and issuer are always checked; `oidc` mode without an
audience refuses to start."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import flask
import pytest

from google_certs import GoogleCerts, SigningKey
from talon import entrypoints
from talon.api.google_oidc import GoogleOidcVerifier
from talon.api.push import push_checks
from talon.api.scheduler_callback import callback_verifier
from talon.config import MessageBrokerSettings, SchedulerSettings
from talon.errors import ConfigError, PermissionDenied, Unauthenticated

AUDIENCE = "https://talon-dev-dispatch-abc123-uc.a.run.app"
EMAIL = "talon-dev-push@my-project.iam.gserviceaccount.com"


@pytest.fixture
def google() -> Iterator[GoogleCerts]:
    server = GoogleCerts(max_age=300)
    yield server
    server.close()


def _verifier(google: GoogleCerts) -> GoogleOidcVerifier:
    return GoogleOidcVerifier(
        audience=AUDIENCE, email=EMAIL, what="push request", certs_url=google.url
    )


def _request(token: str | None) -> flask.Request:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return flask.Request.from_values("/", method="POST", headers=headers)


def test_many_verifications_fetch_the_certificates_once(google: GoogleCerts) -> None:
    verify = _verifier(google)
    for _ in range(25):
        verify(_request(google.token(audience=AUDIENCE, email=EMAIL)))
    assert google.fetches == 1


def test_concurrent_verifications_on_a_cold_cache_fetch_once() -> None:
    # Each answer takes 300 ms, so all eight verifications ask while the first is fetching.
    google = GoogleCerts(max_age=300, delay=0.3)
    try:
        verify = _verifier(google)
        token = google.token(audience=AUDIENCE, email=EMAIL)
        start = threading.Barrier(8)
        errors: list[BaseException] = []

        def run() -> None:
            start.wait()
            try:
                verify(_request(token))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == []
        assert google.fetches == 1
    finally:
        google.close()


def test_the_certificates_are_fetched_again_once_their_max_age_has_passed() -> None:
    google = GoogleCerts(max_age=1)
    try:
        verify = _verifier(google)
        token = google.token(audience=AUDIENCE, email=EMAIL)
        verify(_request(token))
        verify(_request(token))
        assert google.fetches == 1
        time.sleep(2.1)  # HTTP dates have whole seconds: two of them, to be past max-age
        verify(_request(token))
        assert google.fetches == 2
    finally:
        google.close()


def test_a_token_for_another_audience_is_refused(google: GoogleCerts) -> None:
    verify = _verifier(google)
    other = google.token(audience="https://some-other-service.a.run.app", email=EMAIL)
    with pytest.raises(Unauthenticated, match="audience"):
        verify(_request(other))


def test_tokens_that_are_not_google_signed_for_our_account_are_refused(
    google: GoogleCerts,
) -> None:
    verify = _verifier(google)
    with pytest.raises(Unauthenticated, match="without an OIDC token"):
        verify(_request(None))
    with pytest.raises(PermissionDenied):
        verify(_request(google.token(audience=AUDIENCE, email="someone@example.com")))
    with pytest.raises(PermissionDenied):
        verify(_request(google.token(audience=AUDIENCE, email=EMAIL, email_verified=False)))
    with pytest.raises(Unauthenticated, match="not issued by Google"):
        verify(_request(google.token(audience=AUDIENCE, email=EMAIL, iss="https://evil.test")))
    expired = int(time.time()) - 7200
    with pytest.raises(Unauthenticated, match="expired"):
        verify(_request(google.token(audience=AUDIENCE, email=EMAIL, iat=expired, exp=expired)))
    # Signed by a key Google does not publish (the same key id, another key).
    forged = SigningKey(google.key.key_id).token(audience=AUDIENCE, email=EMAIL)
    with pytest.raises(Unauthenticated):
        verify(_request(forged))
    verify(_request(google.token(audience=AUDIENCE, email=EMAIL)))  # the real thing passes


def test_oidc_mode_without_an_audience_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError) as refused:
        push_checks(MessageBrokerSettings(push_service_account_email=EMAIL))
    assert "control_plane.message_broker.pushAudience" in refused.value.message
    assert "TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_AUDIENCE" in refused.value.message
    with pytest.raises(ConfigError) as refused:
        callback_verifier(SchedulerSettings(service_account_email=EMAIL))
    assert "control_plane.scheduler.callbackAudience" in refused.value.message
    # The audience of a callback defaults to the callback URL.
    assert callback_verifier(SchedulerSettings(service_account_email=EMAIL, callback_url=AUDIENCE))
    with pytest.raises(ValueError):
        GoogleOidcVerifier(audience="", email=EMAIL, what="push request")


def test_the_dispatch_function_refuses_to_start_in_oidc_mode_without_an_audience(
    gateway_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_VERIFICATION", "oidc")
    monkeypatch.setenv("TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_SERVICE_ACCOUNT_EMAIL", EMAIL)
    monkeypatch.delenv("TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_AUDIENCE", raising=False)
    entrypoints.reset()
    with pytest.raises(ConfigError, match="pushAudience"):
        entrypoints.dispatch()
    monkeypatch.setenv("TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_AUDIENCE", AUDIENCE)
    entrypoints.reset()  # settings are read once per process
    assert entrypoints.dispatch() is not None

"""PushVerifier and decode_push: Pub/Sub push authentication and envelope parsing."""

from __future__ import annotations

import base64
import json

import pytest

from app.config import Settings
from app.providers.gmail.push import GmailPush, PushAuthError, PushVerifier, decode_push
from tests.providers.gmail.conftest import PUSH_AUDIENCE
from tests.providers.gmail.sim import GoogleSim


@pytest.fixture
def verifier(gmail_settings: Settings) -> PushVerifier:
    # gmail_settings exported SSL_CERT_FILE: the JWKS fetch trusts the simulator's CA.
    return PushVerifier(gmail_settings)


async def _authorization(sim: GoogleSim, **options: object) -> str:
    minted = await sim.mint_push("user@example.com", 10_000_000_001, **options)
    return str(minted["authorization"])


async def test_accepts_a_simulator_signed_push(sim: GoogleSim, verifier: PushVerifier) -> None:
    claims = await verifier.verify(await _authorization(sim, audience=PUSH_AUDIENCE))
    assert claims["aud"] == PUSH_AUDIENCE
    assert claims["email"] == "gmail-push@mailsync-sim.iam.gserviceaccount.com"
    assert claims["iss"] == "https://accounts.google.com"
    # The key set is cached: a second push needs no fetch and still verifies.
    assert (await verifier.verify(await _authorization(sim, audience=PUSH_AUDIENCE)))["sub"]


async def test_accepts_the_short_issuer(sim: GoogleSim, verifier: PushVerifier) -> None:
    authorization = await _authorization(sim, audience=PUSH_AUDIENCE, issuer="accounts.google.com")
    assert (await verifier.verify(authorization))["iss"] == "accounts.google.com"


@pytest.mark.parametrize(
    ("options", "status"),
    [
        ({"audience": PUSH_AUDIENCE, "bad_signature": True}, 401),
        ({"audience": PUSH_AUDIENCE, "expired": True}, 401),
        ({"audience": PUSH_AUDIENCE, "issuer": "https://evil.example.com"}, 401),
        ({"audience": "https://someone-else.example.com/push"}, 403),
        (
            {"audience": PUSH_AUDIENCE, "service_account": "intruder@evil.iam.gserviceaccount.com"},
            403,
        ),
        ({"audience": PUSH_AUDIENCE, "email_verified": False}, 403),
    ],
)
async def test_refuses_bad_pushes(
    sim: GoogleSim, verifier: PushVerifier, options: dict[str, object], status: int
) -> None:
    with pytest.raises(PushAuthError) as raised:
        await verifier.verify(await _authorization(sim, **options))
    assert raised.value.status == status


@pytest.mark.parametrize("authorization", [None, "", "Basic abc", "Bearer ", "Bearer not.a.jwt"])
async def test_refuses_missing_or_garbage_tokens(
    verifier: PushVerifier, authorization: str | None
) -> None:
    with pytest.raises(PushAuthError) as raised:
        await verifier.verify(authorization)
    assert raised.value.status == 401


async def test_fails_closed_without_audience(sim: GoogleSim, gmail_settings: Settings) -> None:
    unconfigured = PushVerifier(gmail_settings.model_copy(update={"google_push_audience": ""}))
    with pytest.raises(PushAuthError) as raised:
        await unconfigured.verify(await _authorization(sim, audience=PUSH_AUDIENCE))
    assert raised.value.status == 403


async def test_unreachable_keys_are_503(sim: GoogleSim, gmail_settings: Settings) -> None:
    broken = PushVerifier(
        gmail_settings.model_copy(update={"google_push_certs_url": "https://127.0.0.1:9/certs"})
    )
    with pytest.raises(PushAuthError) as raised:
        await broken.verify(await _authorization(sim, audience=PUSH_AUDIENCE))
    assert raised.value.status == 503


def _envelope(
    payload: object, *, urlsafe: bool = True, message_id: str = "2070443601311540"
) -> bytes:
    raw = json.dumps(payload).encode()
    data = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return json.dumps(
        {
            "message": {
                "data": data,
                "messageId": message_id,
                "publishTime": "2026-01-01T00:00:00Z",
            },
            "subscription": "projects/p/subscriptions/s",
        }
    ).encode()


async def test_decodes_the_simulators_envelope(sim: GoogleSim) -> None:
    minted = await sim.mint_push("User@Example.com", 12_345_678_901)
    push = decode_push(json.dumps(minted["body"]).encode())
    assert push == GmailPush(
        email_address="user@example.com",
        history_id=12_345_678_901,
        message_id=minted["body"]["message"]["messageId"],
    )


def test_decodes_documented_variants() -> None:
    # Gmail's guide shows historyId as a string; Pub/Sub may use standard base64.
    as_documented = {"emailAddress": "user@example.com", "historyId": "9876543210"}
    for urlsafe in (True, False):
        push = decode_push(_envelope(as_documented, urlsafe=urlsafe))
        assert push.history_id == 9876543210 and push.email_address == "user@example.com"
    unpadded = base64.urlsafe_b64encode(json.dumps(as_documented).encode()).rstrip(b"=")
    body = json.dumps({"message": {"data": unpadded.decode(), "message_id": "7"}}).encode()
    assert decode_push(body).message_id == "7"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"message": {}}',
        b'{"message": {"data": "!!!", "messageId": "1"}}',
        _envelope({"emailAddress": "user@example.com"}),
        _envelope({"emailAddress": "user@example.com", "historyId": True}),
        _envelope({"emailAddress": "user@example.com", "historyId": "-5"}),
        _envelope({"emailAddress": "nobody", "historyId": 5}),
        _envelope(["not", "an", "object"]),
        _envelope({"emailAddress": "user@example.com", "historyId": 5}, message_id=""),
        # What PostgreSQL cannot store, and what Gmail never sends.
        _envelope({"emailAddress": "user\x00@example.com", "historyId": 5}),
        _envelope({"emailAddress": "user@example.com", "historyId": "9" * 40}),
        _envelope({"emailAddress": "u" * 600 + "@example.com", "historyId": 5}),
        b'{"message": ' * 3000 + b"1" + b"}" * 3000,
    ],
)
def test_refuses_malformed_envelopes(body: bytes) -> None:
    with pytest.raises(ValueError):
        decode_push(body)


def test_redeliveries_share_a_dedup_key() -> None:
    payload = {"emailAddress": "user@example.com", "historyId": 5}
    first = decode_push(_envelope(payload, message_id="81"))
    assert first.dedup_key == decode_push(_envelope(payload, message_id="81")).dedup_key
    assert first.dedup_key != decode_push(_envelope(payload, message_id="82")).dedup_key
    assert first.recorded() == {"history_id": "5", "message_id": "81"}

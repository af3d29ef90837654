"""Everything the Google side of the simulator holds, hung off `sim.extra["google"]`."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from app.simulator.app import Simulator
from app.simulator.google.keys import SigningKeys
from app.simulator.google.mailbox import Change, Mailbox
from app.simulator.google.push import PushService
from app.simulator.google.quota import QuotaBucket

GMAIL_SCOPE = "https://www.googleapis.com/auth/gmail.readonly"
DEFAULT_TOKEN_LIFETIME = 3599


@dataclass
class GoogleAccount:
    email: str
    mailbox: Mailbox
    refresh_token: str
    access_token_lifetime: int
    quota: QuotaBucket = field(default_factory=QuotaBucket)
    revoked: bool = False

    @property
    def counter_key(self) -> str:
        # Namespaced: the same address may also exist on the Microsoft side.
        return f"google:{self.email}"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int


class GoogleState:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.accounts: dict[str, GoogleAccount] = {}
        self._access_tokens: dict[str, tuple[str, float]] = {}
        self._refresh_tokens: dict[str, str] = {}
        self.keys = SigningKeys()
        self.push = PushService(self.keys)

    def account(self, email: str) -> GoogleAccount | None:
        return self.accounts.get(email.lower())

    def create_account(
        self,
        email: str,
        *,
        seed: int,
        messages: int,
        access_token_lifetime: int,
        history_id_start: int | None,
    ) -> GoogleAccount:
        email = email.lower()
        if history_id_start is None:
            # Just below 10**10: a few hundred changes cross a digit boundary, so a client
            # comparing history ids as strings goes wrong quickly.
            history_id_start = 9_999_999_000 + (seed % 500)
        mailbox = Mailbox(
            email,
            seed=seed,
            total=messages,
            history_id_start=history_id_start,
            retention=lambda: self.sim.core.faults.gmail_history_retention,
        )
        refresh_token = "1//0" + secrets.token_urlsafe(48)
        account = GoogleAccount(email, mailbox, refresh_token, access_token_lifetime)
        self.accounts[email] = account
        self._refresh_tokens[refresh_token] = email
        return account

    def issue_access_token(self, account: GoogleAccount) -> IssuedToken:
        now = time.time()
        if len(self._access_tokens) > 10_000:
            self._access_tokens = {
                t: (e, exp) for t, (e, exp) in self._access_tokens.items() if exp > now
            }
        token = "ya29.a0" + secrets.token_urlsafe(64)
        self._access_tokens[token] = (account.email, now + account.access_token_lifetime)
        return IssuedToken(token, account.access_token_lifetime)

    def account_for_access_token(self, token: str) -> GoogleAccount | None:
        entry = self._access_tokens.get(token)
        if entry is None:
            return None
        email, expires_at = entry
        account = self.accounts.get(email)
        if account is None or account.revoked or time.time() >= expires_at:
            return None
        return account

    def account_for_refresh_token(self, token: str) -> GoogleAccount | None:
        email = self._refresh_tokens.get(token)
        return self.accounts.get(email) if email else None

    def expire_access_tokens(self, account: GoogleAccount) -> int:
        expired = 0
        for token, (email, _) in list(self._access_tokens.items()):
            if email == account.email:
                self._access_tokens[token] = (email, 0.0)
                expired += 1
        return expired

    def revoke(self, account: GoogleAccount) -> None:
        """Revoking a Google grant kills the refresh token and every access token of it."""
        account.revoked = True
        self.expire_access_tokens(account)

    def changed(self, account: GoogleAccount, changes: list[Change]) -> None:
        """After a mutation: publish to the watch's topic when its label filter wants it."""
        watch = account.mailbox.watch
        if not changes or watch is None:
            return
        if watch.expiration_ms <= time.time() * 1000:
            account.mailbox.watch = None
            return
        if watch.wants(changes):
            self.push.publish(account.email, account.mailbox.history_id, watch.topic_name)


def google_state(sim: Simulator) -> GoogleState:
    state = sim.extra.get("google")
    if state is None:
        state = sim.extra["google"] = GoogleState(sim)
    assert isinstance(state, GoogleState)
    return state

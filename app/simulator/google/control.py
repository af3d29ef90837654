"""`/_sim/google/...`: seed accounts, change mailboxes, break things, read the truth."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from app.simulator.app import Simulator
from app.simulator.contacts import PlantedContact
from app.simulator.content import custom_content
from app.simulator.google.mailbox import MAX_MESSAGES, Change
from app.simulator.google.push import PushConfig
from app.simulator.google.render import ground_truth_entry
from app.simulator.google.state import (
    DEFAULT_TOKEN_LIFETIME,
    GMAIL_SCOPE,
    GoogleAccount,
    GoogleState,
)


class CreateAccount(BaseModel):
    email: str = Field(min_length=3)
    seed: int = 0
    messages: int = Field(default=100, ge=0, le=MAX_MESSAGES)
    access_token_lifetime: int = Field(default=DEFAULT_TOKEN_LIFETIME, ge=0)
    history_id_start: int | None = Field(default=None, ge=1, lt=2**63)
    # Correspondents placed into seeded messages (app/simulator/contacts.py).
    contacts: list[PlantedContact] = Field(default_factory=list, max_length=100)


class UpdateAccount(BaseModel):
    access_token_lifetime: int | None = Field(default=None, ge=0)


class AddMessages(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    count: int = Field(default=1, ge=1, le=1000)
    label_ids: list[str] = Field(default_factory=lambda: ["INBOX", "UNREAD", "CATEGORY_PERSONAL"])
    subject: str = "Simulated message"
    from_: str = Field(default="Sim Sender <sender@example.net>", alias="from")
    to: list[str] | None = None
    cc: list[str] = Field(default_factory=list)
    snippet: str = "a message delivered by the simulator control API"
    has_attachments: bool = False
    # Put the new message in this message's thread, as a reply.
    reply_to: str | None = None
    # Content of its own (tests): bodies and attachments (then has_attachments follows them).
    text: str | None = None
    html: str | None = None
    attachments: list[dict[str, Any]] | None = None


class MessageIds(BaseModel):
    ids: list[str] = Field(min_length=1)


class ModifyMessages(MessageIds):
    add_label_ids: list[str] = Field(default_factory=list)
    remove_label_ids: list[str] = Field(default_factory=list)


class MarkMessages(MessageIds):
    read: bool


class AddOperation(AddMessages):
    op: Literal["add"]


class ModifyOperation(ModifyMessages):
    op: Literal["modify"]


class DeleteOperation(MessageIds):
    op: Literal["delete"]


class OneRecord(BaseModel):
    """Changes Gmail writes as a single history record, applied in this order. `ids` may
    name a message added earlier in the same request as `new:<n>` (0-based)."""

    operations: list[
        Annotated[AddOperation | ModifyOperation | DeleteOperation, Field(discriminator="op")]
    ] = Field(min_length=1)


class MintPush(BaseModel):
    email: str
    history_id: int
    audience: str | None = None
    service_account: str | None = None
    issuer: str = "https://accounts.google.com"
    expired: bool = False
    bad_signature: bool = False
    email_verified: bool = True
    # What a push subscription without authentication sends: no Authorization header.
    unsigned: bool = False


def control_router(sim: Simulator, state: GoogleState) -> APIRouter:
    router = APIRouter(prefix="/_sim/google", tags=["control"])

    def account_or_404(email: str) -> GoogleAccount:
        account = state.account(email)
        if account is None:
            raise HTTPException(404, f"no simulated Google account {email}")
        return account

    def check_labels(account: GoogleAccount, label_ids: list[str]) -> frozenset[str]:
        unknown = [x for x in label_ids if not account.mailbox.known_label(x)]
        if unknown:
            raise HTTPException(400, f"unknown label ids: {unknown}")
        return frozenset(label_ids)

    def summary(account: GoogleAccount) -> dict[str, Any]:
        mailbox = account.mailbox
        watch = mailbox.watch
        counters = sim.core.counters.snapshot()["accounts"].get(account.counter_key)
        return {
            "email": account.email,
            "messages_total": mailbox.messages_total,
            "history_id": str(mailbox.history_id),
            "floor_history_id": str(mailbox.floor_history_id),
            "access_token_lifetime": account.access_token_lifetime,
            "revoked": account.revoked,
            "counter_key": account.counter_key,
            "counters": counters,
            "watch": None
            if watch is None
            else {
                "topic_name": watch.topic_name,
                "label_ids": sorted(watch.label_ids),
                "label_filter_behavior": watch.behavior,
                "expiration": str(watch.expiration_ms),
            },
        }

    def after_change(account: GoogleAccount, changes: list[Change]) -> str:
        state.changed(account, changes)
        return str(account.mailbox.history_id)

    @router.post("/accounts", status_code=201)
    async def create_account(body: CreateAccount) -> dict[str, Any]:
        if state.account(body.email) is not None:
            raise HTTPException(409, f"account {body.email} exists")
        account = state.create_account(
            body.email,
            seed=body.seed,
            messages=body.messages,
            access_token_lifetime=body.access_token_lifetime,
            history_id_start=body.history_id_start,
        )
        try:
            account.mailbox.plant(body.contacts)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        issued = state.issue_access_token(account)
        return {
            "email": account.email,
            "access_token": issued.access_token,
            "refresh_token": account.refresh_token,
            "expires_in": issued.expires_in,
            "token_type": "Bearer",
            "scope": GMAIL_SCOPE,
            "history_id": str(account.mailbox.history_id),
            "counter_key": account.counter_key,
        }

    @router.get("/accounts/{email}")
    async def get_account(email: str) -> dict[str, Any]:
        return summary(account_or_404(email))

    @router.patch("/accounts/{email}")
    async def update_account(email: str, body: UpdateAccount) -> dict[str, Any]:
        account = account_or_404(email)
        if body.access_token_lifetime is not None:
            account.access_token_lifetime = body.access_token_lifetime
        return summary(account)

    @router.post("/accounts/{email}/tokens")
    async def issue_token(email: str) -> dict[str, Any]:
        account = account_or_404(email)
        if account.revoked:
            raise HTTPException(409, "grant revoked")
        issued = state.issue_access_token(account)
        return {"access_token": issued.access_token, "expires_in": issued.expires_in}

    @router.post("/accounts/{email}/tokens/expire")
    async def expire_tokens(email: str) -> dict[str, int]:
        return {"expired": state.expire_access_tokens(account_or_404(email))}

    @router.post("/accounts/{email}/revoke")
    async def revoke(email: str) -> dict[str, str]:
        state.revoke(account_or_404(email))
        return {"status": "revoked"}

    @router.post("/accounts/{email}/messages", status_code=201)
    async def add_messages(email: str, body: AddMessages) -> dict[str, Any]:
        account = account_or_404(email)
        labels = check_labels(account, body.label_ids)
        if body.reply_to is not None and not account.mailbox.exists(body.reply_to):
            raise HTTPException(400, f"reply_to {body.reply_to} does not exist")
        content = None
        if body.text is not None or body.html is not None or body.attachments is not None:
            try:
                content = custom_content(
                    len(account.mailbox.added) + 1,
                    text=body.text,
                    body_html=body.html,
                    attachments=list(body.attachments or ()),
                )
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from exc
        added, changes = [], []
        for n in range(body.count):
            view, change = account.mailbox.add_message(
                label_ids=labels,
                subject=body.subject if body.count == 1 else f"{body.subject} #{n + 1}",
                from_header=body.from_,
                to=tuple(body.to) if body.to is not None else (account.email,),
                cc=tuple(body.cc),
                snippet=body.snippet,
                has_attachments=body.has_attachments,
                reply_to=body.reply_to,
                content=content,
            )
            added.append({"id": view.id, "threadId": view.thread_id, "labelIds": view.label_ids})
            changes.append(change)
        return {"messages": added, "history_id": after_change(account, changes)}

    @router.post("/accounts/{email}/history/record", status_code=201)
    async def one_record(email: str, body: OneRecord) -> dict[str, Any]:
        account = account_or_404(email)
        mailbox = account.mailbox
        added: list[str] = []

        def resolve(ids: list[str]) -> list[str]:
            resolved = []
            for ref in ids:
                if ref.startswith("new:"):
                    n = int(ref[4:]) if ref[4:].isdigit() else -1
                    if not 0 <= n < len(added):
                        raise HTTPException(400, f"{ref} names no message added before it")
                    ref = added[n]
                resolved.append(ref)
            return resolved

        for operation in body.operations:
            if isinstance(operation, ModifyOperation):
                check_labels(account, operation.add_label_ids + operation.remove_label_ids)
            elif isinstance(operation, AddOperation):
                check_labels(account, operation.label_ids)
        changes: list[Change] = []
        with mailbox.one_record():
            for operation in body.operations:
                if isinstance(operation, AddOperation):
                    for n in range(operation.count):
                        view, change = mailbox.add_message(
                            label_ids=frozenset(operation.label_ids),
                            subject=operation.subject
                            if operation.count == 1
                            else f"{operation.subject} #{n + 1}",
                            from_header=operation.from_,
                            to=tuple(operation.to)
                            if operation.to is not None
                            else (account.email,),
                            cc=tuple(operation.cc),
                            snippet=operation.snippet,
                            has_attachments=operation.has_attachments,
                            reply_to=operation.reply_to,
                        )
                        added.append(view.id)
                        changes.append(change)
                elif isinstance(operation, ModifyOperation):
                    for message_id in resolve(operation.ids):
                        modified = mailbox.modify_message(
                            message_id,
                            frozenset(operation.add_label_ids),
                            frozenset(operation.remove_label_ids),
                        )
                        if modified is not None:
                            changes.append(modified)
                else:
                    for message_id in resolve(operation.ids):
                        deleted = mailbox.delete_message(message_id)
                        if deleted is not None:
                            changes.append(deleted)
        return {"added": added, "history_id": after_change(account, changes)}

    @router.post("/accounts/{email}/messages/delete")
    async def delete_messages(email: str, body: MessageIds) -> dict[str, Any]:
        account = account_or_404(email)
        changes: list[Change] = []
        missing: list[str] = []
        for message_id in body.ids:
            change = account.mailbox.delete_message(message_id)
            if change is None:
                missing.append(message_id)
            else:
                changes.append(change)
        return {
            "deleted": [c.message_id for c in changes],
            "missing": missing,
            "history_id": after_change(account, changes),
        }

    def modify(
        account: GoogleAccount, ids: list[str], add: frozenset[str], remove: frozenset[str]
    ) -> dict[str, Any]:
        changes: list[Change] = []
        missing = [x for x in ids if not account.mailbox.exists(x)]
        for message_id in ids:
            change = account.mailbox.modify_message(message_id, add, remove)
            if change is not None:
                changes.append(change)
        return {
            "modified": [c.message_id for c in changes],
            "missing": missing,
            "history_id": after_change(account, changes),
        }

    @router.post("/accounts/{email}/messages/modify")
    async def modify_messages(email: str, body: ModifyMessages) -> dict[str, Any]:
        account = account_or_404(email)
        add = check_labels(account, body.add_label_ids)
        remove = check_labels(account, body.remove_label_ids)
        return modify(account, body.ids, add, remove)

    @router.post("/accounts/{email}/messages/mark")
    async def mark_messages(email: str, body: MarkMessages) -> dict[str, Any]:
        account = account_or_404(email)
        unread = frozenset({"UNREAD"})
        if body.read:
            return modify(account, body.ids, frozenset(), unread)
        return modify(account, body.ids, unread, frozenset())

    @router.post("/accounts/{email}/history/expire")
    async def expire_history(email: str) -> dict[str, str]:
        account = account_or_404(email)
        account.mailbox.expire_history()
        return {"floor_history_id": str(account.mailbox.floor_history_id)}

    @router.get("/accounts/{email}/truth")
    async def ground_truth(
        email: str,
        offset: int = Query(default=0, ge=0),
        limit: int = Query(default=10_000, ge=1, le=100_000),
    ) -> dict[str, Any]:
        mailbox = account_or_404(email).mailbox
        views = mailbox.ground_truth(offset, limit)
        return {
            "messages_total": mailbox.messages_total,
            "history_id": str(mailbox.history_id),
            "messages": [ground_truth_entry(v) for v in views],
        }

    @router.get("/accounts/{email}/contacts/{address}")
    async def contact_truth(email: str, address: str) -> dict[str, Any]:
        """Ids of the existing messages `address` takes part in (from, to, cc), newest first:
        the truth a case search for it must reproduce."""
        return {"ids": account_or_404(email).mailbox.involving(address)}

    @router.get("/push")
    async def get_push() -> PushConfig:
        return state.push.config

    @router.put("/push")
    async def put_push(config: PushConfig) -> PushConfig:
        state.push.configure(config)
        return state.push.config

    @router.get("/push/deliveries")
    async def deliveries(email: str | None = None) -> dict[str, Any]:
        return {"deliveries": state.push.log(email)}

    @router.delete("/push/deliveries")
    async def clear_deliveries() -> dict[str, str]:
        state.push.deliveries.clear()
        return {"status": "cleared"}

    @router.post("/push/mint")
    async def mint(body: MintPush) -> dict[str, Any]:
        config = state.push.config
        if body.unsigned:
            return {
                "authorization": None,
                "body": state.push.envelope(body.email.lower(), body.history_id),
            }
        audience = body.audience or config.audience or config.endpoint or ""
        token = state.push.oidc_token(
            audience=audience,
            service_account=body.service_account,
            issuer=body.issuer,
            expired=body.expired,
            bad_signature=body.bad_signature,
            email_verified=body.email_verified,
        )
        return {
            "authorization": f"Bearer {token}",
            "body": state.push.envelope(body.email.lower(), body.history_id),
        }

    return router

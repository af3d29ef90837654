"""`/_sim/microsoft/...`: seed mailboxes, hand out grants, mutate mail, break things on purpose."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from app.simulator.app import Simulator
from app.simulator.contacts import PlantedContact
from app.simulator.content import custom_content
from app.simulator.microsoft import delta, ids
from app.simulator.microsoft.mailbox import ChangeEvent, Folder, Mailbox
from app.simulator.microsoft.resources import MESSAGE_PROPERTIES, SelectError, iso, parse_select
from app.simulator.microsoft.state import MicrosoftState, Tenant, get_state
from app.simulator.microsoft.subscriptions import LIFECYCLE_EVENTS, notify_changes, send_lifecycle

# Building the folder index of a big mailbox takes a second or so: do it off the event loop.
_BUILD_IN_THREAD_ABOVE = 20_000


class CreateAccount(BaseModel):
    email: str
    message_count: int = Field(default=100, ge=0, le=1_000_000)
    seed: int | None = None
    token_lifetime: int = Field(default=3600, ge=0, description="access-token expires_in, seconds")
    user_id: str | None = None
    tenant_id: str | None = None
    display_name: str | None = None
    app_only_granted: bool = True
    app_token_lifetime: int = Field(default=3599, ge=0)
    # Correspondents placed into seeded messages (app/simulator/contacts.py).
    contacts: list[PlantedContact] = Field(default_factory=list, max_length=100)
    # Where seeded messages go: "default" spreads them over the folders (Inbox 64%, Sent
    # Items 12%, ...); "inbox_only" puts every one in the Inbox, the other folders empty.
    layout: Literal["default", "inbox_only"] = "default"


class AccountPatch(BaseModel):
    token_lifetime: int | None = Field(default=None, ge=0)
    app_only_granted: bool | None = None


class AttachmentBody(BaseModel):
    name: str = "file.bin"
    content_type: str = "application/octet-stream"
    size: int = Field(default=1000, ge=0, le=60 * 1024 * 1024)
    inline: bool = False
    content_id: str | None = None


class TenantConsent(BaseModel):
    # Admin consent to the application permission Mail.Read (app-only access).
    granted: bool


class AddMessages(BaseModel):
    folder: str = "inbox"
    count: int = Field(default=1, ge=1, le=10_000)
    subject: str | None = None
    from_address: str | None = None
    is_read: bool = False
    # Content of its own (tests): bodies and attachments instead of the seeded ones.
    text: str | None = None
    html: str | None = None
    attachments: list[AttachmentBody] | None = None
    # A draft or an API-created item: no from/sender, recipients without names, an empty
    # subject, no receivedDateTime.
    incomplete: bool = False
    # Any property rendered oddly: {"drop": [names], "set": {name: any JSON value}}.
    quirks: dict[str, Any] | None = None


class Selection(BaseModel):
    """Either explicit ids (REST or immutable) or the newest `count` messages of `folder`."""

    ids: list[str] | None = None
    folder: str | None = None
    count: int = Field(default=1, ge=1, le=100_000)


class MoveMessages(Selection):
    destination: str


class MarkRead(Selection):
    is_read: bool = True


class SetCategories(Selection):
    categories: list[str] = Field(default_factory=list)


class RevokeGrants(BaseModel):
    # Entra access tokens stay valid until they expire; set this to kill them too.
    access_tokens: bool = False


class ExpireDelta(BaseModel):
    folder: str | None = None
    code: Literal["syncStateNotFound", "resyncRequired"] = "syncStateNotFound"


class Prerender(BaseModel):
    # Exactly as the client will send $select (any spelling Graph accepts); null for none.
    select: str | None = None
    immutable: bool = True


class Lifecycle(BaseModel):
    event: str


class NewFolder(BaseModel):
    display_name: str = Field(min_length=1, max_length=255)
    # An id or well-known name; the root ("msgfolderroot") makes a top-level folder.
    parent: str = "msgfolderroot"


class FolderChange(BaseModel):
    """Rename, move under another parent, or both."""

    display_name: str | None = Field(default=None, min_length=1, max_length=255)
    parent: str | None = None


class MicrosoftSettings(BaseModel):
    refresh_token_grace_seconds: float | None = Field(default=None, ge=0)
    validation_timeout_seconds: float | None = Field(default=None, gt=0)
    notification_timeout_seconds: float | None = Field(default=None, gt=0)
    notification_retries: int | None = Field(default=None, ge=0, le=10)
    notification_retry_delay_seconds: float | None = Field(default=None, ge=0)
    revalidate_on_renew: bool | None = None
    lifecycle_shape: Literal["exchange", "documented"] | None = None
    drop_change_notifications: bool | None = None


def _seed_for(email: str) -> int:
    return int.from_bytes(hashlib.blake2b(email.lower().encode(), digest_size=4).digest(), "big")


def _tokens(state: MicrosoftState, mailbox: Mailbox) -> dict[str, Any]:
    grant = state.issue_grant(mailbox)
    access_token = state.issue_access_token(
        tenant_id=mailbox.tenant_id,
        user_id=mailbox.user_id,
        lifetime=mailbox.token_lifetime,
        grant_id=grant.grant_id,
    )
    return {
        "token_type": "Bearer",
        "access_token": access_token,
        "refresh_token": grant.refresh_token,
        "expires_in": mailbox.token_lifetime,
    }


def _summary(mailbox: Mailbox) -> dict[str, Any]:
    return {
        "user_id": mailbox.user_id,
        "email": mailbox.email,
        "tenant_id": mailbox.tenant_id,
        "counter_key": mailbox.counter_key,
        "seeded_count": mailbox.seeded_count,
        "layout": mailbox.layout,
        "message_count": sum(f.total for f in mailbox.folders),
        "seq": mailbox.seq,
        "token_lifetime": mailbox.token_lifetime,
        "app_only_granted": mailbox.app_only_granted,
        "planted": {address: len(keys) for address, keys in mailbox.planting.keys.items()},
    }


def _folder_chain(mailbox: Mailbox, folder: Folder) -> list[dict[str, Any]]:
    """The folder and its ancestors below the root, top-level first."""
    chain: list[Folder] = []
    current: Folder | None = folder
    while current is not None and current.index != 0:
        chain.append(current)
        current = mailbox.folders[current.parent] if current.parent is not None else None
    return [
        {"id": f.id, "display_name": f.display_name, "well_known_name": f.well_known_name}
        for f in reversed(chain)
    ]


def _folder_summary(folder: Folder) -> dict[str, Any]:
    return {
        "id": folder.id,
        "display_name": folder.display_name,
        "well_known_name": folder.well_known_name,
        "parent_index": folder.parent,
        "total": folder.total,
        "unread": folder.unread,
    }


def build_control_router(sim: Simulator) -> APIRouter:
    state = get_state(sim)
    router = APIRouter(prefix="/_sim/microsoft", tags=["microsoft control"])

    def mailbox_or_404(user: str) -> Mailbox:
        mailbox = state.find_mailbox(user)
        if mailbox is None:
            raise HTTPException(404, f"no Microsoft account {user!r}")
        return mailbox

    def folder_or_404(mailbox: Mailbox, ref: str) -> Folder:
        folder = mailbox.folder(ref)
        if folder is None:
            raise HTTPException(404, f"no folder {ref!r}")
        return folder

    def select(mailbox: Mailbox, selection: Selection) -> list[int]:
        if selection.ids is not None:
            keys = []
            for value in selection.ids:
                key = mailbox.resolve_message(value)
                if key is None:
                    raise HTTPException(404, f"no message {value!r}")
                keys.append(key)
            return keys
        if selection.folder is None:
            raise HTTPException(422, "give ids or a folder")
        folder = folder_or_404(mailbox, selection.folder)
        return list(itertools.islice(mailbox.members(folder), selection.count))

    def changed(mailbox: Mailbox, events: list[ChangeEvent | None]) -> dict[str, Any]:
        done = [e for e in events if e is not None]
        notify_changes(state, mailbox, done)
        return {
            "ids": [mailbox.message_id(e.key, immutable=True) for e in done],
            "rest_ids": [mailbox.message_id(e.key, immutable=False) for e in done],
            "changed": len(done),
            "seq": mailbox.seq,
        }

    @router.post("/accounts", status_code=201)
    async def create_account(body: CreateAccount) -> dict[str, Any]:
        email = body.email.lower()
        if email in state.user_ids_by_email:
            raise HTTPException(409, f"account {email} exists")
        domain = email.rsplit("@", 1)[-1]
        mailbox = Mailbox(
            email=email,
            seed=body.seed if body.seed is not None else _seed_for(email),
            message_count=body.message_count,
            tenant_id=body.tenant_id or ids.user_guid(domain),
            user_id=body.user_id,
            display_name=body.display_name,
            token_lifetime=body.token_lifetime,
            app_only_granted=body.app_only_granted,
            layout=body.layout,
        )
        try:
            mailbox.plant(body.contacts)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        if body.message_count > _BUILD_IN_THREAD_ABOVE:
            await asyncio.to_thread(mailbox.build_index)
        else:
            mailbox.build_index()
        state.add_mailbox(mailbox, domain)
        state.tenants[mailbox.tenant_id].app_token_lifetime = body.app_token_lifetime
        return _summary(mailbox) | _tokens(state, mailbox)

    @router.get("/accounts")
    async def list_accounts() -> list[dict[str, Any]]:
        return [_summary(m) for m in state.mailboxes.values()]

    @router.get("/accounts/{user}")
    async def get_account(user: str) -> dict[str, Any]:
        mailbox = mailbox_or_404(user)
        return _summary(mailbox) | {"folders": [_folder_summary(f) for f in mailbox.live_folders()]}

    @router.patch("/accounts/{user}")
    async def patch_account(user: str, body: AccountPatch) -> dict[str, Any]:
        mailbox = mailbox_or_404(user)
        if body.token_lifetime is not None:
            mailbox.token_lifetime = body.token_lifetime
        if body.app_only_granted is not None:
            mailbox.app_only_granted = body.app_only_granted
        return _summary(mailbox)

    @router.post("/accounts/{user}/grants", status_code=201)
    async def new_grant(user: str) -> dict[str, Any]:
        return _tokens(state, mailbox_or_404(user))

    @router.post("/accounts/{user}/revoke")
    async def revoke(user: str, body: RevokeGrants | None = None) -> dict[str, Any]:
        mailbox = mailbox_or_404(user)
        revoked = 0
        for grant in state.grants.values():
            if grant.user_id == mailbox.user_id and not grant.revoked:
                grant.revoked = True
                revoked += 1
        if body is not None and body.access_tokens:
            _expire_access_tokens(state, mailbox)
        return {"revoked_grants": revoked}

    @router.post("/accounts/{user}/expire-grants")
    async def expire_grants(user: str) -> dict[str, Any]:
        mailbox = mailbox_or_404(user)
        expired = 0
        for grant in state.grants.values():
            if grant.user_id == mailbox.user_id:
                grant.expired = True
                expired += 1
        return {"expired_grants": expired}

    @router.post("/accounts/{user}/access-tokens/expire")
    async def expire_access_tokens(user: str) -> dict[str, Any]:
        return {"expired_access_tokens": _expire_access_tokens(state, mailbox_or_404(user))}

    def tenant_or_404(ref: str) -> Tenant:
        tenant = state.find_tenant(ref)
        if tenant is None:
            raise HTTPException(404, f"no tenant {ref!r}")
        return tenant

    @router.put("/tenants/{tenant}/consent")
    async def set_consent(tenant: str, body: TenantConsent) -> dict[str, Any]:
        """Grant or withdraw the admin consent; tokens issued before keep their roles."""
        found = tenant_or_404(tenant)
        found.app_consent = body.granted
        return {"tenant_id": found.tenant_id, "app_consent": found.app_consent}

    @router.post("/tenants/{tenant}/app-tokens/expire")
    async def expire_app_tokens(tenant: str) -> dict[str, Any]:
        found = tenant_or_404(tenant)
        now = time.time()
        expired = 0
        for token in state.access_tokens.values():
            if token.app_only and token.tenant_id == found.tenant_id and token.expires_at > now:
                token.expires_at = now
                expired += 1
        return {"expired_access_tokens": expired}

    @router.post("/accounts/{user}/messages", status_code=201)
    async def add_messages(user: str, body: AddMessages) -> dict[str, Any]:
        mailbox = mailbox_or_404(user)
        folder = folder_or_404(mailbox, body.folder)
        content = None
        if body.text is not None or body.html is not None or body.attachments is not None:
            content = custom_content(
                _seed_for(mailbox.email) + mailbox.next_key,
                text=body.text,
                body_html=body.html,
                attachments=[a.model_dump() for a in body.attachments or ()],
            )
        quirks = dict(body.quirks or {})
        if body.incomplete:
            quirks.setdefault("drop", ["receivedDateTime"])
            quirks.setdefault(
                "set",
                {
                    "from": None,
                    "sender": None,
                    "subject": "",
                    "toRecipients": [{"emailAddress": {"address": "someone@example.com"}}],
                },
            )
        events: list[ChangeEvent | None] = [
            mailbox.add_message(
                folder,
                subject=body.subject,
                from_address=body.from_address,
                is_read=body.is_read,
                content=content,
                quirks=quirks or None,
            )
            for _ in range(body.count)
        ]
        return changed(mailbox, events)

    @router.post("/accounts/{user}/messages/delete")
    async def delete_messages(user: str, body: Selection) -> dict[str, Any]:
        mailbox = mailbox_or_404(user)
        return changed(mailbox, [mailbox.delete(k) for k in select(mailbox, body)])

    @router.post("/accounts/{user}/messages/move")
    async def move_messages(user: str, body: MoveMessages) -> dict[str, Any]:
        mailbox = mailbox_or_404(user)
        destination = folder_or_404(mailbox, body.destination)
        return changed(mailbox, [mailbox.move(k, destination) for k in select(mailbox, body)])

    @router.post("/accounts/{user}/messages/read")
    async def mark_read(user: str, body: MarkRead) -> dict[str, Any]:
        mailbox = mailbox_or_404(user)
        return changed(mailbox, [mailbox.set_read(k, body.is_read) for k in select(mailbox, body)])

    @router.post("/accounts/{user}/messages/categories")
    async def set_categories(user: str, body: SetCategories) -> dict[str, Any]:
        mailbox = mailbox_or_404(user)
        categories = tuple(body.categories)
        return changed(
            mailbox, [mailbox.set_categories(k, categories) for k in select(mailbox, body)]
        )

    @router.post("/accounts/{user}/folders", status_code=201)
    async def create_folder(user: str, body: NewFolder) -> dict[str, Any]:
        mailbox = mailbox_or_404(user)
        parent = folder_or_404(mailbox, body.parent)
        folder = mailbox.create_folder(body.display_name, parent)
        return _folder_summary(folder) | {"chain": _folder_chain(mailbox, folder)}

    @router.patch("/accounts/{user}/folders/{ref}")
    async def change_folder(user: str, ref: str, body: FolderChange) -> dict[str, Any]:
        mailbox = mailbox_or_404(user)
        folder = folder_or_404(mailbox, ref)
        if folder.index == 0 or (folder.well_known_name and body.parent is not None):
            # Exchange: ErrorMoveDistinguishedFolder.
            raise HTTPException(400, "distinguished folders cannot be moved")
        if body.parent is not None:
            try:
                mailbox.move_folder(folder, folder_or_404(mailbox, body.parent))
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from exc
        if body.display_name is not None:
            mailbox.rename_folder(folder, body.display_name)
        return _folder_summary(folder) | {"chain": _folder_chain(mailbox, folder)}

    @router.delete("/accounts/{user}/folders/{ref}")
    async def delete_folder(user: str, ref: str) -> dict[str, Any]:
        """Permanently, with its subfolders and messages (not a move to Deleted Items:
        that is a move, under `deleteditems`)."""
        mailbox = mailbox_or_404(user)
        folder = folder_or_404(mailbox, ref)
        if folder.index == 0 or folder.well_known_name:
            raise HTTPException(400, "distinguished folders cannot be deleted")
        return changed(mailbox, list(mailbox.delete_folder(folder)))

    @router.post("/accounts/{user}/delta/expire")
    async def expire_delta(user: str, body: ExpireDelta) -> dict[str, Any]:
        mailbox = mailbox_or_404(user)
        folder = folder_or_404(mailbox, body.folder) if body.folder else None
        mailbox.expire_delta_tokens(folder, body.code)
        return {"seq": mailbox.seq}

    @router.post("/accounts/{user}/prerender")
    async def prerender(user: str, body: Prerender) -> dict[str, Any]:
        """Keep the JSON of every seeded message, so delta enumerations only look it up."""
        mailbox = mailbox_or_404(user)
        try:
            select = parse_select(body.select, MESSAGE_PROPERTIES, "microsoft.graph.message")
        except SelectError as exc:
            raise HTTPException(400, str(exc)) from exc
        messages, size = await delta.prerender(mailbox, immutable=body.immutable, select=select)
        return {"messages": messages, "bytes": size}

    @router.get("/accounts/{user}/messages")
    async def ground_truth(
        user: str, folder: str | None = None, offset: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        """The normalized truth a full sync must reproduce (newest first)."""
        mailbox = mailbox_or_404(user)
        keys = (
            mailbox.members(folder_or_404(mailbox, folder)) if folder else mailbox.all_keys_desc()
        )
        stop = None if limit is None else offset + limit
        return {"messages": [_truth(mailbox, k) for k in itertools.islice(keys, offset, stop)]}

    @router.get("/accounts/{user}/contacts/{address}")
    async def contact_truth(user: str, address: str) -> dict[str, Any]:
        """Immutable ids of the existing messages `address` takes part in (from, to, cc),
        newest first: the truth a case search for it must reproduce."""
        mailbox = mailbox_or_404(user)
        wanted = address.lower()
        keys = set(mailbox.planting.keys_between(wanted, 0, mailbox.next_key))
        if not mailbox.planting.only_planted(wanted):
            keys.update(range(mailbox.next_key))
        keys.update(mailbox.added)
        found = [
            mailbox.message_id(key, immutable=True)
            for key in sorted(keys, reverse=True)
            if mailbox.exists(key) and wanted in _people(mailbox, key)
        ]
        return {"ids": found}

    @router.get("/subscriptions")
    async def list_subscriptions() -> list[dict[str, Any]]:
        return [
            s.resource_json(sim.base_url) | {"userId": s.user_id, "expired": s.expired()}
            for s in state.subscriptions.values()
        ]

    @router.delete("/subscriptions/{subscription_id}")
    async def remove_subscription(subscription_id: str) -> dict[str, Any]:
        """Drop a subscription without telling anyone (as an expiry or an admin would)."""
        if state.subscriptions.pop(subscription_id, None) is None:
            raise HTTPException(404, "no such subscription")
        return {"removed": subscription_id}

    @router.post("/subscriptions/{subscription_id}/lifecycle", status_code=202)
    async def lifecycle(subscription_id: str, body: Lifecycle) -> dict[str, Any]:
        if body.event not in LIFECYCLE_EVENTS:
            raise HTTPException(422, f"event must be one of {sorted(LIFECYCLE_EVENTS)}")
        subscription = state.subscriptions.get(subscription_id)
        if subscription is None:
            raise HTTPException(404, "no such subscription")
        return send_lifecycle(state, subscription, body.event).as_dict()

    @router.get("/deliveries")
    async def deliveries(
        subscription_id: str | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        return [
            d.as_dict()
            for d in state.deliveries
            if (subscription_id is None or d.subscription_id == subscription_id)
            and (kind is None or d.kind == kind)
        ]

    @router.get("/settings")
    async def get_settings() -> dict[str, Any]:
        return _settings(state)

    @router.put("/settings")
    async def put_settings(body: MicrosoftSettings) -> dict[str, Any]:
        for name, value in body.model_dump(exclude_none=True).items():
            setattr(state, name, value)
        return _settings(state)

    return router


def _settings(state: MicrosoftState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in MicrosoftSettings.model_fields}


def _expire_access_tokens(state: MicrosoftState, mailbox: Mailbox) -> int:
    now = time.time()
    count = 0
    for token in state.access_tokens.values():
        if token.user_id == mailbox.user_id and token.expires_at > now:
            token.expires_at = now
            count += 1
    return count


def _people(mailbox: Mailbox, key: int) -> set[str]:
    generated = mailbox.content(key)
    return {mailbox.sender(key)[1], *generated.to, *generated.cc}


def _truth(mailbox: Mailbox, key: int) -> dict[str, Any]:
    state = mailbox.state(key)
    generated = mailbox.content(key)
    folder = mailbox.folders[state.folder]
    return {
        "id": mailbox.message_id(key, immutable=True),
        "rest_id": mailbox.message_id(key, immutable=False, generation=state.generation),
        "folder_id": folder.id,
        "folder": folder.display_name,
        "well_known_name": folder.well_known_name,
        "folder_chain": _folder_chain(mailbox, folder),
        "is_read": state.is_read,
        "categories": list(state.categories),
        "subject": generated.subject,
        "conversation_id": ids.conversation_id(mailbox.tag, generated.thread_index),
        "internet_message_id": generated.internet_message_id,
        "received_at": iso(generated.received_at),
        "from": mailbox.sender(key)[1],
        "to": list(generated.to),
        "cc": list(generated.cc),
        "has_attachments": generated.has_attachments,
    }

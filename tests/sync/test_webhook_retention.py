"""The webhook log keeps WEBHOOK_LOG_RETENTION_HOURS: the cron deletes older rows, in batches."""

from __future__ import annotations

from sqlalchemy import text

from app.sync import webhook_retention
from app.sync.runtime import Runtime
from app.sync.worker import WorkerSettings


async def test_rows_past_retention_are_pruned_in_batches(rt: Runtime, monkeypatch) -> None:
    rt.settings = rt.settings.model_copy(update={"webhook_log_retention_hours": 24.0})
    async with rt.engine.begin() as conn:
        await conn.execute(
            text(
                """
                INSERT INTO webhook_notifications (received_at, provider, outcome, kind, payload)
                SELECT now() - make_interval(hours => h), 'microsoft', 'accepted',
                       'change:created', '{}'
                  FROM generate_series(1, 60) AS h
                """
            )
        )
    monkeypatch.setattr(webhook_retention, "PRUNE_BATCH", 7)
    deleted = await webhook_retention.prune_webhook_log({"rt": rt})
    assert deleted == 60 - 23  # 24 h and older go (the 24 h row is a moment past the bound)
    async with rt.sessions() as session:
        ages = (
            (
                await session.execute(
                    text(
                        "SELECT round(extract(epoch FROM now() - received_at) / 3600) "
                        "FROM webhook_notifications ORDER BY received_at DESC"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert [int(a) for a in ages] == list(range(1, 24))
    assert await webhook_retention.prune_webhook_log({"rt": rt}) == 0


def test_the_worker_runs_the_pruning_cron() -> None:
    names = {c.name for c in WorkerSettings.cron_jobs}
    assert "cron:prune_webhook_log" in names

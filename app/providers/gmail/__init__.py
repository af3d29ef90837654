"""Gmail: OAuth refresh, the Gmail API client, history-based sync and Pub/Sub push helpers."""

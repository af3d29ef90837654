"""Gmail is one stream: the mailbox's history (labels are not streams of their own)."""

STREAM_KEY = "mailbox"

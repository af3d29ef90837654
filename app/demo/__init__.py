"""`make run` / `mailsync demo`: the whole service against the simulator, watchable in a minute."""

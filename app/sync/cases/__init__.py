"""Case mail: every message exchanged with a case's contacts, found and linked to the case."""

"""The store: the authority on every accepted task (SQLite; the Store protocol)."""

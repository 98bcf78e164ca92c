"""The pure core: no I/O, `now` passed in; mypy --strict."""

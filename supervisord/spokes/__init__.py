"""The I/O spokes: sockets, processes, systemd, telemetry. Spokes never import each other or the hub."""

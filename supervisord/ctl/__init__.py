"""The client: supctl, its commands, watch and bench."""

"""The daemon's loop: one inbox, and the verbs that carry out the core's decisions."""

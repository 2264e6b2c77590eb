"""The `talon` command: kubectl-like verbs against a gateway, and `talon dev`."""

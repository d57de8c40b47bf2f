"""Fault injection against the real demo model: the tool's durability promise under SIGKILL."""

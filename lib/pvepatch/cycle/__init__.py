"""The patch cycle of one VM: its actions (agent, apt, restart) and the typed record they fill."""

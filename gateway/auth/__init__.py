"""Who may call the gateway: API keys, their roles, and checking a presented key."""

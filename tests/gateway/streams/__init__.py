"""Video in the gateway: WebSocket streams, server-side streams, the relay."""

"""The HTTP face: the app factory, the webhook, its signature and its answers, health."""

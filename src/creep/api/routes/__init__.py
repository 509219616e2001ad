"""One router module per resource; `ALL` is what the app mounts under /v1."""

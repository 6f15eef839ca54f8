"""The FastAPI gateway: app factory, routes, auth, error handlers."""

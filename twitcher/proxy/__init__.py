"""Forwarding: the proxy view and its exchange with the backend."""

"""Custodes server."""

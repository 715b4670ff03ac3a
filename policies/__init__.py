"""Custodes policies."""

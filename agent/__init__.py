"""Custodes agent."""

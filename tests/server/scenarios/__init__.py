"""Detection scenarios: event streams (YAML) with the exact incidents they must produce."""

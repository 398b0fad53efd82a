"""unirl."""

"""Sotto's command-line entry point."""

"""Placeholder: the server assembly is being written (start_server, run)."""

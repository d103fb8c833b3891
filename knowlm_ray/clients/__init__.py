"""Clients of a running knowlm server: terminal chat and a web UI."""

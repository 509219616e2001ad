"""Talking to a creep server over HTTP (the worker protocol)."""

"""Helpers for the kith interop test suite."""

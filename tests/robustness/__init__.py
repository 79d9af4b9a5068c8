"""Robustness suite: malformed input, hostile configuration, and what leaves the machine."""

"""Takedown requests: intake, matching, processing, verification."""

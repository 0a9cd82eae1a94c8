"""Untrusted media: formats and sizes checked from their headers before decoding, and uploaded
videos decoded in a child process."""

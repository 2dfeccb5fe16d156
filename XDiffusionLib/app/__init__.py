"""Thin user-facing layers over the library: the command line and the web app."""

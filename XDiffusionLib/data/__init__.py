"""Data that ships with the package: real MRI samples and templates (see samples/README.md)."""

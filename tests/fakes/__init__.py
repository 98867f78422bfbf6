"""Fakes of outside services, each a real server on loopback that follows SPEC.md."""

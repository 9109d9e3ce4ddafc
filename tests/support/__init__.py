"""Helpers the tests share (processes, seams, threads, faults): imported by tests, never by conftest."""

"""Helpers the tests import: processes and servers, seams, threads, RPC faults,
HTTP end to end. Fixtures stay in ``tests/conftest.py``, built from these."""

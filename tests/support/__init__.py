"""Helpers the test suites share: servers and other machinery the tests start themselves."""

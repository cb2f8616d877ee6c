"""Shared pytest configuration: the real-server fixtures are plugins under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.s3",
    "tests.fixtures.prometheus",
    "tests.fixtures.cluster",
    "tests.tiers",
]

"""The shared fixtures live in tests/support/, registered here as plugins."""

pytest_plugins = ["tests.support.database", "tests.support.browser"]

pytest_plugins = ["dbmazz.testing.fixtures"]

"""Infrastructure shared by the tests and the benchmarks: Azurite, an HTTP proxy."""

//! Test-only package; the suites are in `tests/tests/`.

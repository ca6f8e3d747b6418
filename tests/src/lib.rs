//! Test harness shared by the suites: per-test Redis prefixes and databases, process spawning.

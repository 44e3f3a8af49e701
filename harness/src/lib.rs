//! chimney-harness: host stack, VMM role, scenarios.

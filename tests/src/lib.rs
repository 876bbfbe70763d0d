//! Integration tests for the workspace live in `tests/tests/`; UI tests in `tests/ui/`.

//! Nested test host (placeholder).

//! Tiny guests (placeholder).

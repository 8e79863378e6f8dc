//! VMM core (placeholder).

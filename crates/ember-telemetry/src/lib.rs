//! Logger and metrics (placeholder).

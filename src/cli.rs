//! TEMPORARY STUB (replaced by the real cli module).

//! TEMPORARY STUB (replaced by the real logging module).

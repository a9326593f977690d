//! Embedded adapters: SQLite store, durable local queue, timer scheduler.

//! Raw kernel calls.

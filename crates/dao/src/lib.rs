//! dao

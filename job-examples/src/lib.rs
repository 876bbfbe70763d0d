//! Example services built on job-core.

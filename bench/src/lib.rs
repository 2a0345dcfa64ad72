//! The load generator and the side-by-side comparison report.
//!
//! Not built yet: `bench compare` reports what it is missing and exits with
//! an error until the kvnode and bench issues land.

//! The client side of operator commands that do more than one request and
//! one table: `apply` (a progress bar over a stream of answers) and `jobs`
//! (reads the store directly, so it works with the master stopped).

pub mod apply;
pub mod jobs;

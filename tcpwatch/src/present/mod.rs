//! Presentation: which connections and findings the operator asked for
//! (`filter`), how they are written (`output`: text and JSON lines), and the
//! tables `top` and the daemon's metrics share (`summary`).
pub mod filter;
pub mod output;
pub mod summary;

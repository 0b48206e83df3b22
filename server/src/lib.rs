//! flashsale server
#[cfg(feature = "sql")]
pub mod problem;
#[cfg(feature = "sql")]
pub mod signature;

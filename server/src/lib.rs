//! flashsale server

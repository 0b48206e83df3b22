//! `flashsale-load setup`: creates the products a load run needs through the admin API
//! (`POST /api/admin/products`), one after the other on one connection, and returns their ids in
//! creation order.

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use super::cli::SetupArgs;
use super::http::{Connection, Target, Template};

/// How long one admin request may take; creating a product is one small transaction.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct CreateProduct<'a> {
    name: &'a str,
    price_cents: u64,
    stock: u32,
}

#[derive(Deserialize)]
struct Created {
    id: u64,
}

/// Creates `args.products` products named `<args.name> 1`.. with `args.stock` units each.
///
/// # Errors
/// The server could not be reached, or answered anything but 201 with an `id` (a wrong admin
/// token is a 401, admin routes without a configured token a 404).
pub async fn setup(args: &SetupArgs) -> anyhow::Result<Vec<u64>> {
    let target = Target::parse(&args.target)?;
    let template =
        Template::post_json("/api/admin/products", Bytes::new())?.bearer(&args.admin_token)?;
    let mut connection = Connection::open(&target, SETUP_TIMEOUT).await?;
    let mut ids = Vec::new();
    for number in 1..=args.products {
        let name = format!("{} {number}", args.name);
        let body = serde_json::to_vec(&CreateProduct {
            name: &name,
            price_cents: args.price_cents,
            stock: args.stock,
        })?;
        if connection.is_closed() {
            connection = Connection::open(&target, SETUP_TIMEOUT).await?;
        }
        let request = template.request_with(&target, Bytes::from(body), None);
        let (status, body) = connection
            .send(request, SETUP_TIMEOUT)
            .await
            .context("POST /api/admin/products")?;
        if status != StatusCode::CREATED {
            bail!(
                "POST /api/admin/products answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let created: Created = serde_json::from_slice(&body)
            .context("POST /api/admin/products answered 201 without an id")?;
        ids.push(created.id);
    }
    Ok(ids)
}

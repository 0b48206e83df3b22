//! The cluster's history as a node's binary log has it, replayed.
//!
//! Galera gives every committed transaction one place in a global order, and a node with
//! `log_slave_updates` writes every transaction of the cluster to its binary log in that order,
//! each with the images of the rows it changed, before and after. That is as close as the
//! cluster lets a test come to the commit-order replay of the real-storage tests, and it needs
//! no help from the servers: `mariadb-binlog` decodes the log after the run.
//!
//! The replay checks two things of every transaction:
//! - each row it changed was, before, what the last transaction left (no write decided on a
//!   row another transaction has since changed, as far as the row images tell);
//! - each product's counters moved by exactly what its expiry buckets and orders did in the same
//!   transaction: `units_held` by the units its buckets gained less those they lost (the open
//!   bucket in its own row and those of the table: a grant adds to its deadline's bucket, an
//!   order or a release takes from its hold's, a fold deletes or empties the buckets it folds), `stock` by the units restocked less those ordered plus those of orders
//!   cancelled. A batch split over two transactions, its product update in one and its buckets
//!   in the other, fails here even when the totals come out right at the end.

#![allow(
    clippy::arithmetic_side_effects,
    reason = "sums of the few units a test run moves, replayed from its log, far from overflow"
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

/// One row change: the table and the row's images (an insert has no before, a delete no after).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    table: String,
    before: Option<Vec<String>>,
    after: Option<Vec<String>>,
}

/// One transaction of the log: its GTID and its row changes, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Logged {
    gtid: String,
    /// Its row changes, in order.
    pub changes: Vec<Change>,
}

/// Every transaction on `database` in the binary log files `files`, in log order.
pub fn read(files: &[PathBuf], database: &str) -> Vec<Logged> {
    let output = Command::new("mariadb-binlog")
        .args(["--no-defaults", "-v", "--base64-output=DECODE-ROWS"])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("mariadb-binlog runs (the MariaDB client package): {e}"));
    assert!(
        output.status.success(),
        "mariadb-binlog decodes {files:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse(&String::from_utf8_lossy(&output.stdout), database)
}

/// The transactions in `mariadb-binlog -v` output.
fn parse(text: &str, database: &str) -> Vec<Logged> {
    let mut logged: Vec<Logged> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(at) = line.find("\tGTID ") {
            let gtid = line.get(at + 6..).unwrap_or_default();
            let gtid = gtid
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            logged.push(Logged {
                gtid,
                changes: Vec::new(),
            });
            continue;
        }
        let Some(event) = line.strip_prefix("### ") else {
            continue;
        };
        let (kind, target) = if let Some(t) = event.strip_prefix("INSERT INTO ") {
            ("insert", t)
        } else if let Some(t) = event.strip_prefix("UPDATE ") {
            ("update", t)
        } else if let Some(t) = event.strip_prefix("DELETE FROM ") {
            ("delete", t)
        } else {
            continue;
        };
        let Some(table) = target
            .strip_prefix(&format!("`{database}`.`"))
            .and_then(|t| t.strip_suffix('`'))
        else {
            continue;
        };
        let mut image = || {
            // `### SET` or `### WHERE`, then one `###   @n=value` line per column.
            lines.next();
            let mut values = Vec::new();
            while let Some(value) = lines.peek().and_then(|l| l.strip_prefix("###   @")) {
                let value = value.split_once('=').map_or("", |(_, v)| v);
                values.push(value.trim_matches('\'').to_owned());
                lines.next();
            }
            values
        };
        let (before, after) = match kind {
            "insert" => (None, Some(image())),
            "update" => {
                let before = image();
                (Some(before), Some(image()))
            }
            _ => (Some(image()), None),
        };
        if let Some(current) = logged.last_mut() {
            current.changes.push(Change {
                table: table.to_owned(),
                before,
                after,
            });
        }
    }
    logged
}

/// The position of each column the replay reads, by table, from `information_schema`.
pub type Columns = BTreeMap<String, Vec<String>>;

fn column<'a>(columns: &Columns, table: &str, name: &str, row: &'a [String]) -> &'a str {
    let at = columns
        .get(table)
        .and_then(|names| names.iter().position(|n| n == name))
        .unwrap_or_else(|| panic!("{table} has a column {name}"));
    row.get(at).map_or("", String::as_str)
}

fn number(columns: &Columns, table: &str, name: &str, row: &[String]) -> i64 {
    let value = column(columns, table, name, row);
    value
        .parse()
        .unwrap_or_else(|_| panic!("{table}.{name} is a number, not {value:?}"))
}

/// Replays `history`; the first transaction that breaks a rule, said with its GTID and rows.
pub fn check(history: &[Logged], columns: &Columns) -> Result<(), String> {
    let mut rows: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for tx in history {
        // product id -> (held moved, stock moved) as the holds and orders say, and as written.
        let mut implied: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut written: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
        for change in &tx.changes {
            let image = change.after.as_ref().or(change.before.as_ref());
            let id = image
                .map(|row| row_id(columns, &change.table, row))
                .unwrap_or_default();
            let key = (change.table.clone(), id);
            if let (Some(before), Some(last)) = (&change.before, rows.get(&key))
                && before != last
            {
                return Err(refusal(
                    tx,
                    &format!("{key:?} was {last:?} but it changed {before:?}"),
                ));
            }
            let id = key.1.clone();
            match &change.after {
                Some(after) => rows.insert(key, after.clone()),
                None => rows.remove(&key),
            };
            let t = change.table.as_str();
            let state = |row: &Option<Vec<String>>, name: &str| {
                row.as_deref()
                    .map(|r| column(columns, t, name, r).to_owned())
            };
            match t {
                "products" => {
                    if let (Some(before), Some(after)) = (&change.before, &change.after) {
                        let moved = |name: &str| {
                            number(columns, t, name, after) - number(columns, t, name, before)
                        };
                        // The open bucket in the product's row is a bucket like the table's.
                        implied.entry(id.clone()).or_default().0 += moved("open_units");
                        let entry = written.entry(id).or_default();
                        entry.0 += moved("units_held");
                        entry.1 += moved("stock");
                        entry.2 += moved("units_received");
                    }
                }
                "expiry_buckets" => {
                    let Some(row) = image else { continue };
                    let product = column(columns, t, "product_id", row).to_owned();
                    let units = |r: &Option<Vec<String>>| {
                        r.as_ref().map_or(0, |r| number(columns, t, "units", r))
                    };
                    implied.entry(product).or_default().0 +=
                        units(&change.after) - units(&change.before);
                }
                "orders" => {
                    let Some(row) = image else { continue };
                    let product = column(columns, t, "product_id", row).to_owned();
                    let qty = number(columns, t, "qty", row);
                    let (was, is) = (
                        state(&change.before, "status"),
                        state(&change.after, "status"),
                    );
                    let cancelled = |s: &Option<String>| s.as_deref() == Some("cancelled");
                    let stock = if was.is_none() {
                        -qty
                    } else if cancelled(&is) && !cancelled(&was) {
                        qty
                    } else {
                        0
                    };
                    implied.entry(product).or_default().1 += stock;
                }
                _ => {}
            }
        }
        let products: std::collections::BTreeSet<&String> =
            implied.keys().chain(written.keys()).collect();
        for product in products {
            let (held, stock) = implied.get(product).copied().unwrap_or_default();
            let (held_written, stock_written, received) =
                written.get(product).copied().unwrap_or_default();
            if (held, stock + received) != (held_written, stock_written) {
                return Err(refusal(
                    tx,
                    &format!(
                        "product {product}: its holds and orders move units_held by {held} and \
                         stock by {}, its row moves them by {held_written} and {stock_written}",
                        stock + received
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A row's identity in its table: its first column (an id or a key), or for an expiry bucket its
/// product and deadline.
fn row_id(columns: &Columns, table: &str, row: &[String]) -> String {
    match table {
        "expiry_buckets" => format!(
            "{}@{}",
            column(columns, table, "product_id", row),
            column(columns, table, "expires_at", row)
        ),
        _ => row.first().cloned().unwrap_or_default(),
    }
}

fn refusal(tx: &Logged, why: &str) -> String {
    let mut said = format!("transaction {}: {why}; its changes:", tx.gtid);
    for change in &tx.changes {
        let _ = write!(
            said,
            "\n  {} {:?} -> {:?}",
            change.table, change.before, change.after
        );
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Columns {
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        Columns::from([
            (
                "products".to_owned(),
                names(&[
                    "id",
                    "name",
                    "price_cents",
                    "stock",
                    "units_held",
                    "units_received",
                    "expired_through",
                    "holds_to_retire",
                    "open_expires_at",
                    "open_units",
                    "open_holds",
                ]),
            ),
            (
                "holds".to_owned(),
                names(&[
                    "id",
                    "product_id",
                    "qty",
                    "created_at",
                    "expires_at",
                    "state",
                ]),
            ),
            (
                "expiry_buckets".to_owned(),
                names(&["product_id", "expires_at", "units", "holds"]),
            ),
        ])
    }

    fn log(transactions: &[&[&str]]) -> String {
        let mut text = String::new();
        for (n, events) in transactions.iter().enumerate() {
            let _ = writeln!(
                text,
                "#261205 server id 1 end_log_pos 1 CRC32 0x0 \tGTID 0-1-{n} trans"
            );
            for event in *events {
                text.push_str(event);
                text.push('\n');
            }
        }
        text
    }

    const GRANT: &str = "### UPDATE `f`.`products`\n### WHERE\n###   @1=7\n###   @2='p'\n###   @3=1\n###   @4=10\n###   @5=0\n###   @6=10\n###   @7=0\n###   @8=0\n###   @9=0\n###   @10=0\n###   @11=0\n### SET\n###   @1=7\n###   @2='p'\n###   @3=1\n###   @4=10\n###   @5=1\n###   @6=10\n###   @7=0\n###   @8=0\n###   @9=0\n###   @10=0\n###   @11=0";
    const HOLD: &str = "### INSERT INTO `f`.`holds`\n### SET\n###   @1=1\n###   @2=7\n###   @3=1\n###   @4=0\n###   @5=9\n###   @6='held'";
    const BUCKET: &str = "### INSERT INTO `f`.`expiry_buckets`\n### SET\n###   @1=7\n###   @2=9\n###   @3=1\n###   @4=1";

    #[test]
    fn a_grant_with_its_hold_in_one_transaction_replays() {
        let history = parse(&log(&[&[GRANT, BUCKET, HOLD]]), "f");
        assert_eq!(history.len(), 1);
        assert_eq!(check(&history, &columns()), Ok(()));
    }

    #[test]
    fn a_grant_split_from_its_hold_is_refused() {
        let history = parse(&log(&[&[GRANT], &[BUCKET, HOLD]]), "f");
        let refused = check(&history, &columns()).expect_err("a split batch");
        assert!(
            refused.contains("transaction 0-1-0: product 7"),
            "{refused}"
        );
    }

    #[test]
    fn a_write_from_a_stale_row_is_refused() {
        let history = parse(&log(&[&[GRANT, BUCKET, HOLD], &[GRANT, BUCKET, HOLD]]), "f");
        let refused = check(&history, &columns()).expect_err("a stale before-image");
        assert!(refused.contains("transaction 0-1-1"), "{refused}");
    }
}

//! `flashsale-load report`: the results of a suite of runs (one JSON line per run, written by
//! `benches/load.sh`) as a markdown table, a table of answers by status, and an SVG bar chart,
//! and the region of `docs/PERFORMANCE.md` between [`BEGIN_MARKER`] and [`END_MARKER`].
//!
//! Rows are figures in the order they first appear; columns are (database, connections) pairs,
//! likewise. A flow run gives four rows: whole flows, then each step.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use super::cli::ReportArgs;
use super::cost::Cost;
use super::stats::Summary;

/// Start of the generated region of the performance document.
pub const BEGIN_MARKER: &str = "<!-- load:begin -->";
/// End of the generated region.
pub const END_MARKER: &str = "<!-- load:end -->";
/// Heading of the section appended when the document has no markers yet.
const SECTION_HEADING: &str = "## HTTP load";

/// Bar colours, one per database in order of appearance.
const PALETTE: [&str; 4] = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1"];

/// One line of the input: which database and figure a `run --json` summary measured.
#[derive(Debug, Deserialize)]
pub struct Record {
    /// Database label, e.g. `SQLite`.
    pub db: String,
    /// Figure label, e.g. `hot holds (batched)`.
    pub figure: String,
    /// Connections of the run.
    pub connections: u32,
    /// What the run printed with `--json`.
    pub result: Summary,
}

/// One cell: a rate, its p99, the answers behind it, and what the run cost (on a run's own
/// row, not on a flow's step rows).
#[derive(Clone, Debug)]
struct Cell {
    rate: f64,
    p99_ms: f64,
    answers: String,
    cost: Option<Cost>,
}

/// The figures laid out: row labels, column labels (database, connections), cells.
#[derive(Debug, Default)]
struct Grid {
    rows: Vec<String>,
    columns: Vec<(String, u32)>,
    cells: BTreeMap<(usize, usize), Cell>,
}

impl Grid {
    fn from_records(records: &[Record]) -> Self {
        let mut grid = Grid::default();
        for record in records {
            let column = (record.db.clone(), record.connections);
            let column = index_of(&mut grid.columns, column);
            for (row, cell) in cells_of(record) {
                let row = index_of(&mut grid.rows, row);
                grid.cells.insert((row, column), cell);
            }
        }
        grid
    }

    fn databases(&self) -> Vec<String> {
        let mut databases = Vec::new();
        for (db, _) in &self.columns {
            index_of(&mut databases, db.clone());
        }
        databases
    }
}

/// Writes what `args` asks for and returns the markdown table.
///
/// # Errors
/// An unreadable or malformed input, or a file that cannot be written.
pub fn report(args: &ReportArgs) -> anyhow::Result<String> {
    let input = fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let records = input
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            serde_json::from_str::<Record>(line).with_context(|| {
                format!("{} line {}", args.input.display(), number.saturating_add(1))
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let grid = Grid::from_records(&records);
    let table = markdown(&grid);
    if let Some(svg) = &args.svg {
        fs::write(svg, chart(&grid)).with_context(|| format!("writing {}", svg.display()))?;
    }
    if let Some(doc) = &args.doc {
        let preamble = match &args.preamble {
            Some(path) => {
                fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
            }
            None => String::new(),
        };
        let mut region = preamble.trim_end().to_owned();
        region.push_str("\n\n");
        region.push_str(&table);
        if let Some(svg) = &args.svg {
            let _ = writeln!(
                region,
                "\n![HTTP load: throughput per figure]({})",
                svg_link(doc, svg)
            );
        }
        let text = match fs::read_to_string(doc) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(error).with_context(|| format!("reading {}", doc.display())),
        };
        fs::write(doc, replace_region(&text, &region))
            .with_context(|| format!("writing {}", doc.display()))?;
    }
    Ok(table)
}

/// `text` with the region between the markers replaced by `region`, or with a new section
/// holding the markers and `region` appended when the markers are absent. Nothing outside the
/// markers changes.
pub fn replace_region(text: &str, region: &str) -> String {
    let body = format!("{BEGIN_MARKER}\n{}\n{END_MARKER}", region.trim_end());
    if let (Some(begin), Some(end)) = (text.find(BEGIN_MARKER), text.find(END_MARKER))
        && begin < end
    {
        let after = end.saturating_add(END_MARKER.len());
        return format!("{}{body}{}", &text[..begin], &text[after..]);
    }
    let mut out = text.trim_end().to_owned();
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    let _ = writeln!(out, "{SECTION_HEADING}\n\n{body}");
    out
}

fn index_of<T: PartialEq>(items: &mut Vec<T>, item: T) -> usize {
    if let Some(index) = items.iter().position(|existing| *existing == item) {
        return index;
    }
    items.push(item);
    items.len().saturating_sub(1)
}

fn cells_of(record: &Record) -> Vec<(String, Cell)> {
    let result = &record.result;
    let answers = |status: &BTreeMap<u16, u64>, errors: u64| compact_answers(status, errors);
    match (&result.flow, &result.steps) {
        (Some(flow), Some(steps)) => {
            let whole = Cell {
                rate: flow.rate_per_s,
                p99_ms: flow.p99_ms,
                answers: format!("{} flows", flow.count),
                cost: result.cost.clone(),
            };
            let step = |name: &str, step: &super::stats::StepSummary| {
                let cell = Cell {
                    rate: step.rps,
                    p99_ms: step.p99_ms,
                    answers: answers(&step.status, step.errors),
                    cost: None,
                };
                (format!("{}: {name} step", record.figure), cell)
            };
            vec![
                (format!("{} (flows/s)", record.figure), whole),
                step("hold", &steps.hold),
                step("order", &steps.order),
                step("webhook", &steps.webhook),
            ]
        }
        _ => vec![(
            record.figure.clone(),
            Cell {
                rate: result.rps,
                p99_ms: result.p99_ms,
                answers: answers(&result.status, result.errors),
                cost: result.cost.clone(),
            },
        )],
    }
}

/// `201:5000 409:12 err:3`: every status with its count, errors only when there were some.
fn compact_answers(status: &BTreeMap<u16, u64>, errors: u64) -> String {
    let mut out: Vec<String> = status
        .iter()
        .map(|(code, count)| format!("{code}:{count}"))
        .collect();
    if errors > 0 {
        out.push(format!("err:{errors}"));
    }
    if out.is_empty() {
        return "none".to_owned();
    }
    out.join(" ")
}

fn markdown(grid: &Grid) -> String {
    let mut out = String::new();
    let header: Vec<String> = grid
        .columns
        .iter()
        .map(|(db, connections)| format!("{db} {connections}"))
        .collect();
    let rule = vec!["---:"; header.len()].join("|");
    let _ = writeln!(
        out,
        "Each cell: requests (or flows) per second, p99 latency in ms.\n"
    );
    let _ = writeln!(out, "| figure | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{rule}|");
    for (row, label) in grid.rows.iter().enumerate() {
        let cells: Vec<String> = (0..grid.columns.len())
            .map(|column| match grid.cells.get(&(row, column)) {
                Some(cell) => format!("{}, {}", format_rate(cell.rate), format_ms(cell.p99_ms)),
                None => "–".to_owned(),
            })
            .collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        out,
        "\nAnswers by status (`err`: no answer: refused, reset or timed out):\n"
    );
    let _ = writeln!(out, "| figure | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}|", vec!["---"; header.len()].join("|"));
    for (row, label) in grid.rows.iter().enumerate() {
        let cells: Vec<String> = (0..grid.columns.len())
            .map(|column| match grid.cells.get(&(row, column)) {
                Some(cell) => cell.answers.clone(),
                None => "–".to_owned(),
            })
            .collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    let costs = grid.cells.values().any(|cell| cell.cost.is_some());
    if costs {
        let _ = writeln!(
            out,
            "\nWhat a request cost: CPU µs per request of the server + the database (`mariadbd`; \
             none for SQLite, which runs in the server), the cores busy of {}, and the statements \
             (one round trip each) per batch and per request (a flow's figures are per request \
             of its three kinds together):\n",
            std::thread::available_parallelism().map_or(1, usize::from)
        );
        let _ = writeln!(out, "| figure | {} |", header.join(" | "));
        let _ = writeln!(out, "|---|{}|", vec!["---"; header.len()].join("|"));
        for (row, label) in grid.rows.iter().enumerate() {
            let cells: Vec<String> = (0..grid.columns.len())
                .map(|column| {
                    let cost = grid.cells.get(&(row, column)).and_then(|c| c.cost.as_ref());
                    cost.map_or_else(|| "–".to_owned(), format_cost)
                })
                .collect();
            if cells.iter().any(|cell| cell != "–") {
                let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
            }
        }
    }
    out
}

/// `26.7 + 22.6 µs, 1.35 cores, 6.1/batch 0.05/req`.
fn format_cost(cost: &Cost) -> String {
    let us = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.1}"));
    let n = |v: Option<f64>, digits: usize| v.map_or("?".to_owned(), |v| format!("{v:.digits$}"));
    let database = cost
        .database_us
        .map_or(String::new(), |v| format!(" + {v:.1}"));
    format!(
        "{}{database} µs, {} cores, {}/batch {}/req",
        us(cost.server_us),
        n(cost.cores_busy, 2),
        n(cost.statements_per_batch, 1),
        n(cost.statements_per_request, 2),
    )
}

fn format_rate(rate: f64) -> String {
    if rate >= 100.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.1}")
    }
}

fn format_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// `12.3k`, `950`, `4.5`: short enough to sit above a bar.
fn short_rate(rate: f64) -> String {
    if rate >= 10_000.0 {
        format!("{:.0}k", rate / 1_000.0)
    } else if rate >= 1_000.0 {
        format!("{:.1}k", rate / 1_000.0)
    } else {
        format_rate(rate)
    }
}

fn svg_link(doc: &Path, svg: &Path) -> String {
    let parent = |path: &Path| {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        fs::canonicalize(parent.unwrap_or(Path::new(".")))
    };
    match (parent(doc), parent(svg), svg.file_name()) {
        (Ok(a), Ok(b), Some(name)) if a == b => name.to_string_lossy().into_owned(),
        _ => fs::canonicalize(svg)
            .unwrap_or_else(|_| svg.to_path_buf())
            .display()
            .to_string(),
    }
}

/// The colour of the database at `index`, cycling through the palette.
fn colour(index: usize) -> &'static str {
    let slot = index.checked_rem(PALETTE.len()).unwrap_or(0);
    PALETTE.get(slot).copied().unwrap_or("#888")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Panel geometry of the chart, in SVG user units.
const PANEL_WIDTH: f64 = 420.0;
const PANEL_HEIGHT: f64 = 200.0;
const PANELS_PER_ROW: usize = 2;
const CHART_TOP: f64 = 56.0;
const PLOT_TOP: f64 = 54.0;
const PLOT_BOTTOM: f64 = 30.0;
const PLOT_SIDE: f64 = 16.0;

/// Small multiples: one panel per figure with its own scale, one bar per (database,
/// connections) column, labelled with the rate and the p99.
fn chart(grid: &Grid) -> String {
    let databases = grid.databases();
    let panel_rows = grid.rows.len().div_ceil(PANELS_PER_ROW).max(1);
    let width = PANEL_WIDTH * PANELS_PER_ROW as f64;
    let height = CHART_TOP + PANEL_HEIGHT * panel_rows as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{PLOT_SIDE}" y="22" font-size="15" font-weight="bold">HTTP load: requests (or flows) per second, p99 latency under each rate</text>"#
    );
    // The legend: one swatch per database, then what the bars and labels mean. Text width is
    // estimated at 7 units per character of the 12-unit font.
    let mut x = PLOT_SIDE;
    for (index, db) in databases.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="32" width="12" height="12" fill="{}"/><text x="{}" y="42" font-size="12">{}</text>"#,
            colour(index),
            x + 16.0,
            escape(db)
        );
        x += 16.0 + 7.0 * db.chars().count() as f64 + 20.0;
    }
    let _ = writeln!(
        svg,
        r##"<text x="{x}" y="42" font-size="12" fill="#555">bars: connections; labels: rate, p99</text>"##
    );
    for (row, label) in grid.rows.iter().enumerate() {
        let x = PANEL_WIDTH * (row % PANELS_PER_ROW) as f64;
        let y = CHART_TOP + PANEL_HEIGHT * (row / PANELS_PER_ROW) as f64;
        panel(&mut svg, grid, &databases, row, label, (x, y));
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(
    svg: &mut String,
    grid: &Grid,
    databases: &[String],
    row: usize,
    label: &str,
    (x0, y0): (f64, f64),
) {
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        x0 + PLOT_SIDE,
        y0 + 18.0,
        escape(label)
    );
    let columns = grid.columns.len().max(1);
    let plot_width = PANEL_WIDTH - 2.0 * PLOT_SIDE;
    let plot_height = PANEL_HEIGHT - PLOT_TOP - PLOT_BOTTOM;
    let base = y0 + PANEL_HEIGHT - PLOT_BOTTOM;
    let slot = plot_width / columns as f64;
    let peak = (0..columns)
        .filter_map(|column| grid.cells.get(&(row, column)))
        .map(|cell| cell.rate)
        .fold(0.0_f64, f64::max);
    let _ = writeln!(
        svg,
        r##"<line x1="{}" y1="{base}" x2="{}" y2="{base}" stroke="#999"/>"##,
        x0 + PLOT_SIDE,
        x0 + PLOT_SIDE + plot_width
    );
    for (column, (db, connections)) in grid.columns.iter().enumerate() {
        let colour_index = databases.iter().position(|d| d == db).unwrap_or(0);
        let colour = colour(colour_index);
        let x = x0 + PLOT_SIDE + slot * column as f64;
        let centre = x + slot / 2.0;
        let _ = writeln!(
            svg,
            r#"<text x="{centre}" y="{}" font-size="10" text-anchor="middle">{connections}</text>"#,
            base + 13.0
        );
        let Some(cell) = grid.cells.get(&(row, column)) else {
            continue;
        };
        let fraction = if peak > 0.0 { cell.rate / peak } else { 0.0 };
        let bar = (plot_height * fraction).max(1.0);
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="{}" height="{bar}" fill="{colour}"/>"#,
            x + slot * 0.15,
            base - bar,
            slot * 0.7
        );
        let _ = writeln!(
            svg,
            r##"<text x="{centre}" y="{}" font-size="10" text-anchor="middle">{}</text><text x="{centre}" y="{}" font-size="9" fill="#555" text-anchor="middle">{} ms</text>"##,
            base - bar - 14.0,
            short_rate(cell.rate),
            base - bar - 4.0,
            format_ms(cell.p99_ms)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(db: &str, figure: &str, connections: u32, rps: f64) -> anyhow::Result<Record> {
        let line = format!(
            r#"{{"db":"{db}","figure":"{figure}","connections":{connections},"result":{{"scenario":"hot-holds","connections":{connections},"duration_s":3.0,"requests":10,"rps":{rps},"p50_ms":1.0,"p90_ms":2.0,"p99_ms":3.5,"max_ms":4.0,"status":{{"201":10}},"errors":0,"reconnects":0}}}}"#
        );
        Ok(serde_json::from_str(&line)?)
    }

    #[test]
    fn rows_are_figures_and_columns_are_database_and_connections() -> anyhow::Result<()> {
        let records = vec![
            record("SQLite", "hot holds", 16, 1234.4)?,
            record("SQLite", "hot holds", 64, 99.25)?,
            record("MariaDB", "hot holds", 16, 50.0)?,
            record("SQLite", "healthz", 16, 20000.0)?,
        ];
        let table = markdown(&Grid::from_records(&records));
        assert!(table.contains("| figure | SQLite 16 | SQLite 64 | MariaDB 16 |"));
        assert!(table.contains("| hot holds | 1234, 3.50 | 99.2, 3.50 | 50.0, 3.50 |"));
        assert!(table.contains("| healthz | 20000, 3.50 | – | – |"));
        assert!(table.contains("| hot holds | 201:10 | 201:10 | 201:10 |"));
        let svg = chart(&Grid::from_records(&records));
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains(">1.2k<"));
        Ok(())
    }

    #[test]
    fn a_runs_cost_gets_a_table_of_its_own_with_the_rows_that_have_one() -> anyhow::Result<()> {
        let mut hot = record("MariaDB", "hot holds", 256, 25_000.0)?;
        hot.result.cost = Some(Cost {
            server_us: Some(34.7),
            database_us: Some(13.6),
            cores_busy: Some(1.62),
            statements_per_batch: Some(6.07),
            statements_per_request: Some(0.051),
            ..Cost::default()
        });
        let healthz = record("MariaDB", "healthz", 256, 80_000.0)?;
        let table = markdown(&Grid::from_records(&[hot, healthz]));
        assert!(
            table.contains("| hot holds | 34.7 + 13.6 µs, 1.62 cores, 6.1/batch 0.05/req |"),
            "{table}"
        );
        assert!(
            !table.contains("| healthz | –"),
            "rows without a cost are left out: {table}"
        );
        let healthz = record("MariaDB", "healthz", 256, 80_000.0)?;
        let without = markdown(&Grid::from_records(&[healthz]));
        assert!(!without.contains("What a request cost"), "{without}");
        Ok(())
    }

    #[test]
    fn the_region_is_replaced_between_markers_or_appended() {
        let doc = "# Perf\n\nkeep\n<!-- load:begin -->\nold\n<!-- load:end -->\ntail\n";
        let replaced = replace_region(doc, "new\n");
        assert_eq!(
            replaced,
            "# Perf\n\nkeep\n<!-- load:begin -->\nnew\n<!-- load:end -->\ntail\n"
        );
        let appended = replace_region("# Perf\n\nkeep\n", "new");
        assert_eq!(
            appended,
            "# Perf\n\nkeep\n\n## HTTP load\n\n<!-- load:begin -->\nnew\n<!-- load:end -->\n"
        );
        assert_eq!(
            replace_region(&appended, "newer"),
            appended.replace("new\n", "newer\n")
        );
    }
}

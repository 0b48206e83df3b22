//! HTML reports: one self-contained page (no scripts, styles or images from elsewhere) per run
//! or sweep. A run's page shows the verdict, the failure in words with its trace, the plan, the
//! fault profile, what the run covered and, as an SVG timeline, every request as a bar in the
//! lane of the instance that served it and of the client (or provider, admin, sweeper) that
//! sent it, with crashes, clock steps and injected faults marked and the violating request
//! highlighted. A sweep's page shows seeds per second, the failures and the coverage of each
//! item (fault classes, chaos, races, answers) across its seeds.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::summary::{self, SweepSummary};
use crate::world::{Lane, Report, RequestSpan, RunConfig};

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:1700px}\
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}\
.fail{color:#b00}.ok{color:#070}.zero{background:#fdd}\
svg text{font-size:11px;font-family:monospace}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head><body>\n<h1>{}</h1>\n{body}</body></html>\n",
        esc(title),
        esc(title)
    )
}

/// A run's page. With `shrunk`, the timeline and plan are the shrunk run's (the smallest plan
/// that fails the same way), and the original's failure is shown too.
pub fn run_page(
    config: &RunConfig,
    report: &Report,
    shrunk: Option<&(RunConfig, Report)>,
) -> String {
    let (shown_config, shown) = shrunk.map_or((config, report), |(c, r)| (c, r));
    let bug = config
        .bug
        .map_or("none".to_owned(), |b| b.name().to_owned());
    let mut body = String::new();
    let verdict = match &report.failure {
        Some(f) => format!(
            "<p class=\"fail\"><b>FAILED</b>: {}</p>",
            esc(&f.to_string())
        ),
        None => "<p class=\"ok\"><b>passed</b></p>".to_owned(),
    };
    let _ = write!(
        body,
        "<p>seed {} &middot; planted bug: {} &middot; {} operations &middot; {} requests &middot; \
         {} ms simulated &middot; trace {:016x}</p>{verdict}",
        config.seed,
        esc(&bug),
        config.plan.ops(),
        report.stats.requests,
        report.sim_ms,
        report.trace_hash
    );
    if let Some((small, small_report)) = shrunk {
        let _ = write!(
            body,
            "<p>Shrunk to {} operations; below, the shrunk run: {}</p>",
            small.plan.ops(),
            esc(&small_report
                .failure
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default())
        );
    }
    if let Some(f) = &shown.failure {
        body.push_str("<h2>Last trace lines before the failure</h2><pre>");
        for line in &f.trace_tail {
            let _ = writeln!(body, "{}", esc(line));
        }
        body.push_str("</pre>");
    }
    body.push_str("<h2>Timeline</h2>");
    body.push_str(&timeline(shown_config, shown));
    body.push_str("<h2>Fault profile</h2>");
    body.push_str(&faults_table(shown_config));
    body.push_str("<h2>Coverage</h2><table><tr><th>item</th><th>times</th></tr>");
    for (name, n) in summary::coverage_of(shown) {
        let class = if n == 0 { " class=\"zero\"" } else { "" };
        let _ = write!(body, "<tr{class}><td>{}</td><td>{n}</td></tr>", esc(&name));
    }
    body.push_str("</table><h2>Plan</h2><pre>");
    body.push_str(&esc(&shown_config.plan.to_string()));
    body.push_str("</pre>");
    page(&format!("flashsale-sim: seed {}", config.seed), &body)
}

fn faults_table(config: &RunConfig) -> String {
    let f = &config.plan.faults;
    let p = &config.plan;
    format!(
        "<table><tr><th>deadlock</th><th>lock wait timeout</th><th>connection lost</th>\
         <th>commit answer lost</th><th>latency up to</th><th>servers</th><th>hold ttl</th>\
         <th>payment window</th><th>batches of up to</th><th>committers</th></tr><tr>\
         <td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{} us</td><td>{}</td>\
         <td>{} ms</td><td>{} ms</td><td>{}</td><td>{}</td></tr></table>",
        f.deadlock,
        f.lock_timeout,
        f.connection_lost,
        f.commit_answer_lost,
        f.latency_us_max,
        p.servers,
        p.hold_ttl_ms,
        p.payment_window_ms,
        p.batch_max,
        p.committers
    )
}

const LANE_HEIGHT: u64 = 18;
const LABEL_WIDTH: u64 = 90;
const PLOT_WIDTH: u64 = 1500;

/// The run as an SVG: a lane per instance, then per client, the provider, the admin and the
/// sweepers; a bar per request in its instance's lane and its sender's; marks for crashes
/// (red), clock steps (orange) and injected faults (black) on the instances' lanes.
pub fn timeline(config: &RunConfig, report: &Report) -> String {
    let end_us = report
        .requests
        .iter()
        .map(|r| r.end_us)
        .chain(report.trace.iter().map(|e| e.at_us))
        .max()
        .unwrap_or(1)
        .max(1);
    let x = |us: u64| LABEL_WIDTH + us.saturating_mul(PLOT_WIDTH) / end_us;
    let mut lanes: BTreeMap<String, u64> = BTreeMap::new();
    let mut order: Vec<String> = (0..config.plan.servers)
        .map(|i| format!("instance {i}"))
        .collect();
    let mut senders: Vec<Lane> = report.requests.iter().map(|r| r.lane).collect();
    senders.sort_unstable();
    senders.dedup();
    order.extend(senders.iter().map(ToString::to_string));
    for (i, name) in order.iter().enumerate() {
        lanes.insert(name.clone(), i as u64);
    }
    let height = (order.len() as u64 + 1) * LANE_HEIGHT + 10;
    let violating = report.failure.as_ref().and_then(|f| f.request);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         role=\"img\" aria-label=\"timeline\">",
        LABEL_WIDTH + PLOT_WIDTH + 20
    );
    for (i, name) in order.iter().enumerate() {
        let y = i as u64 * LANE_HEIGHT;
        let shade = if i % 2 == 0 { "#fafafa" } else { "#f0f0f0" };
        let _ = write!(
            svg,
            "<rect x=\"0\" y=\"{y}\" width=\"{}\" height=\"{LANE_HEIGHT}\" fill=\"{shade}\"/>\
             <text x=\"2\" y=\"{}\">{}</text>",
            LABEL_WIDTH + PLOT_WIDTH + 20,
            y + 13,
            esc(name)
        );
    }
    for span in &report.requests {
        let highlighted = violating == Some(span.request);
        for lane in [format!("instance {}", span.instance), span.lane.to_string()] {
            if let Some(&row) = lanes.get(&lane) {
                svg.push_str(&bar(span, row, highlighted, &x));
            }
        }
    }
    for event in &report.trace {
        let Some(instance) = event.instance else {
            continue;
        };
        let colour = if event.text.starts_with("chaos: crash") {
            "#d00"
        } else if event.text.starts_with("chaos: the clock") {
            "#e80"
        } else if event.text.starts_with("fault injected") {
            "#000"
        } else {
            continue;
        };
        let y = instance as u64 * LANE_HEIGHT;
        let _ = write!(
            svg,
            "<line x1=\"{0}\" x2=\"{0}\" y1=\"{y}\" y2=\"{1}\" stroke=\"{colour}\" \
             stroke-width=\"2\"><title>{2}</title></line>",
            x(event.at_us),
            y + LANE_HEIGHT,
            esc(&event.to_string())
        );
    }
    let axis_y = order.len() as u64 * LANE_HEIGHT + 12;
    for tick in 0..=10u64 {
        let us = end_us.saturating_mul(tick) / 10;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{axis_y}\">{} ms</text>",
            x(us),
            us / 1_000
        );
    }
    svg.push_str("</svg>");
    format!(
        "<p>Bars are requests (hover for what was sent and answered); the violating request is \
         red. Marks on an instance: crash (red), clock step (orange), injected fault \
         (black).</p><div style=\"overflow-x:auto\">{svg}</div>"
    )
}

fn bar(span: &RequestSpan, row: u64, highlighted: bool, x: &impl Fn(u64) -> u64) -> String {
    let x0 = x(span.start_us);
    let width = x(span.end_us).saturating_sub(x0).max(1);
    let (fill, class) = if highlighted {
        ("#e00", " class=\"violating\"")
    } else if span.outcome.starts_with("no answer") || span.outcome.starts_with("error") {
        ("#999", "")
    } else {
        ("#48c", "")
    };
    format!(
        "<rect{class} data-request=\"r{}\" x=\"{x0}\" y=\"{}\" width=\"{width}\" height=\"{}\" \
         fill=\"{fill}\"><title>r{} {} on instance {}: {} -&gt; {}</title></rect>",
        span.request,
        row * LANE_HEIGHT + 3,
        LANE_HEIGHT - 6,
        span.request,
        esc(&span.lane.to_string()),
        span.instance,
        esc(&span.what),
        esc(&span.outcome)
    )
}

/// A sweep's (or a merge's) page.
pub fn sweep_page(summary: &SweepSummary) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<p>seeds {} &middot; shards {:?} of {} &middot; {} seeds run in {:.1} s: \
         <b>{:.0} seeds/s</b> &middot; {} journeys, {} clients, {} servers per seed &middot; \
         planted bug: {} &middot; trace digest <code>{:016x}</code></p>",
        summary.seeds,
        summary.shards,
        summary.shard_count,
        summary.seeds_run,
        summary.wall_s,
        summary.seeds_per_s(),
        summary.ops,
        summary.clients,
        summary.servers,
        esc(summary.bug.as_deref().unwrap_or("none")),
        summary.trace_digest
    );
    if summary.failures.is_empty() {
        body.push_str("<p class=\"ok\"><b>no seed failed</b></p>");
    } else {
        body.push_str(
            "<h2 class=\"fail\">Failures</h2><table><tr><th>seed</th><th>failure</th>\
             <th>replay</th><th>plan file</th></tr>",
        );
        for f in &summary.failures {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                f.seed,
                esc(&f.failure),
                esc(&f.replay),
                esc(f.plan_file.as_deref().unwrap_or(""))
            );
        }
        body.push_str("</table>");
    }
    body.push_str(
        "<h2>Coverage</h2><p>How often each item happened across the seeds, and in how many \
         seeds.</p><table><tr><th>item</th><th>times</th><th>seeds</th><th>share of seeds</th>\
         </tr>",
    );
    for (name, c) in &summary.coverage {
        let share = c
            .seeds
            .saturating_mul(100)
            .checked_div(summary.seeds_run)
            .unwrap_or(0);
        let class = if c.times == 0 { " class=\"zero\"" } else { "" };
        let _ = write!(
            body,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td><svg width=\"104\" height=\"10\">\
             <rect width=\"{share}\" height=\"10\" fill=\"#48c\"/></svg> {share}%</td></tr>",
            esc(name),
            c.times,
            c.seeds
        );
    }
    body.push_str("</table>");
    page(&format!("flashsale-sim: sweep {}", summary.seeds), &body)
}

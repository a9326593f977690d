//! `hub campaign watch ID`: live progress bars until the campaign is done.

use crate::client::{CliError, Client};
use crate::format::{duration, thousands};
use crate::render;
use crate::views::{self, Detail};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Progress bars for a running campaign: `hub campaign watch` and `hub demo`.
pub(crate) struct Bars {
    multi: MultiProgress,
    status: ProgressBar,
    practices: ProgressBar,
    sent: ProgressBar,
    delivered: ProgressBar,
}

/// What the bars show, from the API's campaign view or the demo's report.
pub(crate) struct Shown {
    pub practices: u64,
    pub extracted: u64,
    pub cohort: u64,
    pub excluded: u64,
    pub sent: u64,
    pub letters: u64,
    pub delivered: u64,
    pub failed: u64,
    pub rate: Option<f64>,
}

impl Bars {
    pub(crate) fn new(visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let style = ProgressStyle::with_template("{prefix:>11} [{bar:40}] {pos:>9}/{len:<9} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = |prefix: &str| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(style.clone());
            bar.set_prefix(prefix.to_string());
            bar
        };
        let status = multi.add(ProgressBar::new_spinner());
        status.enable_steady_tick(Duration::from_millis(120));
        Self {
            practices: bar("practices"),
            sent: bar("sent"),
            delivered: bar("receipts"),
            status,
            multi,
        }
    }

    fn update(&self, d: &Detail, rate: Option<f64>) {
        let c = &d.campaign;
        let totals = c.totals.clone().unwrap_or_default();
        let taking_part: Vec<_> = d
            .practices
            .iter()
            .filter(|p| !matches!(p.state.as_str(), "opted_out" | "notified"))
            .collect();
        let extracted = taking_part
            .iter()
            .filter(|p| matches!(p.state.as_str(), "extracted" | "extraction_failed"))
            .count();
        self.show(&Shown {
            practices: taking_part.len() as u64,
            extracted: extracted as u64,
            cohort: totals.cohort,
            excluded: totals.excluded_total(),
            sent: totals.sent,
            letters: totals.letters,
            delivered: totals.delivered,
            failed: totals.failed,
            rate,
        });
        let eta = c
            .eta_seconds
            .map(|s| format!(", ETA {}", duration(s)))
            .unwrap_or_default();
        let held = render::held_lines(&d.practices);
        let held = if held.is_empty() {
            String::new()
        } else {
            format!("\n{}", held.join("\n"))
        };
        let paused = c
            .paused_until
            .map(|until| format!(" (PAUSED: daily limits reached until {until})"))
            .unwrap_or_default();
        let capacity = c
            .capacity
            .as_ref()
            .map(|capacity| format!("; {}", crate::render::capacity_line(capacity)))
            .unwrap_or_default();
        self.status.set_message(format!(
            "campaign {} — {}{paused}{eta}{capacity}{held}",
            c.id, c.state
        ));
    }

    pub(crate) fn show(&self, shown: &Shown) {
        self.practices.set_length(shown.practices);
        self.practices.set_position(shown.extracted);
        // Receipts can be counted before the sends that caused them.
        let receipts = shown.delivered + shown.failed;
        let sent = shown.sent.max(receipts);
        let expected = shown.cohort.saturating_sub(shown.excluded + shown.letters);
        self.sent.set_length(expected.max(sent));
        self.sent.set_position(sent);
        self.sent.set_message(format!(
            "letters {}  {}",
            thousands(shown.letters),
            shown.rate.map(|r| format!("{r:.0}/s")).unwrap_or_default()
        ));
        self.delivered.set_length(sent);
        self.delivered.set_position(receipts);
        self.delivered.set_message(format!(
            "delivered {}  failed {}",
            thousands(shown.delivered),
            thousands(shown.failed)
        ));
    }

    pub(crate) fn status(&self, message: String) {
        self.status.set_message(message);
    }

    pub(crate) fn finish(&self) {
        self.status.finish_and_clear();
        for bar in [&self.practices, &self.sent, &self.delivered] {
            bar.abandon();
        }
        let _ = self.multi.clear();
    }
}

/// Polls `/campaigns/ID` (`id` already a path segment) every `interval`
/// seconds; with `json`, prints each answer as one line instead of bars.
pub async fn watch(
    client: &Client,
    json: bool,
    id: &str,
    interval: f64,
    max_wait: Option<u64>,
) -> Result<(), CliError> {
    if !(interval.is_finite() && interval > 0.0) {
        return Err(CliError::usage(
            "--interval must be a positive number of seconds",
        ));
    }
    let interval = Duration::from_secs_f64(interval.clamp(0.1, 3600.0));
    let visible = !json && std::io::stderr().is_terminal();
    let bars = Bars::new(visible);
    let started = Instant::now();
    let mut last: Option<(Instant, u64)> = None;
    let mut last_state = String::new();
    let mut rate = None;
    loop {
        let answer = match client.get(&format!("/campaigns/{id}")).await {
            Ok(answer) => answer,
            Err(error) => {
                bars.finish();
                return Err(error);
            }
        };
        let detail: Detail = views::read(answer.clone())?;
        let sent = detail.campaign.totals.as_ref().map(|t| t.sent).unwrap_or(0);
        let now = Instant::now();
        if let Some((then, before)) = last {
            let seconds = (now - then).as_secs_f64();
            if seconds > 0.0 {
                rate = Some(sent.saturating_sub(before) as f64 / seconds);
            }
        }
        last = Some((now, sent));
        if json {
            println!("{answer}");
        } else {
            bars.update(&detail, rate);
            if !visible && detail.campaign.state != last_state {
                println!("{}: {}", detail.campaign.id, detail.campaign.state);
            }
        }
        last_state.clone_from(&detail.campaign.state);
        if matches!(last_state.as_str(), "completed" | "cancelled") {
            bars.finish();
            if !json {
                print!("{}", render::watched(&detail, started.elapsed()));
            }
            return Ok(());
        }
        if max_wait.is_some_and(|limit| started.elapsed() > Duration::from_secs(limit)) {
            bars.finish();
            return Err(CliError::Failure(anyhow::anyhow!(
                "campaign {id} is still {last_state} after {}s",
                started.elapsed().as_secs()
            )));
        }
        tokio::time::sleep(interval).await;
    }
}

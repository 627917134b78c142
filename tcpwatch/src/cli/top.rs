//! `tcpwatch top`: a live terminal view of connections by state, TIME_WAIT
//! by remote endpoint, CLOSE_WAIT by process and the open findings.
use crate::tcp::NetnsId;
use std::{io, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use clap::Args;
use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row, Table, Wrap},
    DefaultTerminal, Frame,
};
use tokio::signal::unix::{signal, SignalKind};

use super::DetectorArgs;
use crate::{
    findings::detect::Detectors,
    findings::{Finding, Severity},
    kernel::event::{decode, LISTEN_OVERFLOW},
    kernel::loader::{self, LoadOptions},
    model::{Limits, Model},
    present::summary::{summarize, Summary},
    session::observer::Dumps,
    session::observer::Observer,
    session::{self, Session, Sink, Ticked},
};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Only this network namespace, by inode number (repeatable).
    #[arg(long = "netns", value_name = "INODE")]
    pub netns: Vec<NetnsId>,

    /// How often the screen is redrawn.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::parse_duration)]
    pub refresh: Duration,

    /// Rows in the TIME_WAIT and CLOSE_WAIT tables before the rest is folded into `other`.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    #[command(flatten)]
    pub detect: DetectorArgs,
}

pub fn run(args: TopArgs) -> anyhow::Result<()> {
    super::block_on(top(args))
}

/// What the screen shows besides the model.
#[derive(Default)]
struct Header {
    events: u64,
    rate: f64,
    lost: u64,
    attached: usize,
}

/// What the user chose: the selected finding and whether its details show.
#[derive(Default)]
struct Selection {
    index: usize,
    details: bool,
}

/// What a key asks for.
enum Keys {
    Quit,
    /// The selection moved or the details were opened or closed.
    Redraw,
    Nothing,
}

async fn top(args: TopArgs) -> anyhow::Result<()> {
    let loader::Probe {
        ebpf: _attached_while_in_scope,
        events,
        counters,
        attached,
        snapshot,
        units,
        reasons,
        ..
    } = loader::load(LoadOptions::default())?;
    let mut observer = Observer::new(
        Model::new(Limits::default())
            .with_listen_overflow_reason(reasons.drop_number(LISTEN_OVERFLOW)),
        Some(Detectors::new(args.detect.thresholds())),
        snapshot,
    )
    .with_units(units);
    if let Some(dumps) = session::dump_once(&args.netns, observer.units()).await {
        observer.apply_dumps(dumps);
    }
    // Keys are read every 100 ms; the screen is redrawn every `--refresh`.
    let session = Session::new(
        events,
        observer.units().clone(),
        &args.netns,
        Duration::from_millis(100),
        args.detect.reconcile_every(),
    )
    .context("cannot poll the ring buffer")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let ring_full = counters.read().map_or(0, |c| c.ringbuf_full);
    let mut session = session.with_ring_full(ring_full);
    let mut sink = TopSink {
        observer,
        counters,
        netns: args.netns.clone(),
        top: args.top,
        refresh: args.refresh.as_nanos() as u64,
        header: Header {
            attached: attached.len(),
            ..Default::default()
        },
        findings: Vec::new(),
        selection: Selection::default(),
        summary: Summary::default(),
        last_draw: 0,
        events_at_last_draw: 0,
        terminal: ratatui::init(),
    };
    let result = session
        .run(&mut sink, async {
            sigterm.recv().await;
        })
        .await;
    ratatui::restore();
    Ok(result?)
}

/// The screen fed by the session: the model and findings, redrawn every
/// `--refresh`, keys read every tick.
struct TopSink {
    observer: Observer,
    counters: loader::CounterReader,
    /// `--netns`: the only namespaces modelled (empty: all).
    netns: Vec<NetnsId>,
    top: usize,
    refresh: u64,
    header: Header,
    findings: Vec<(Finding, NetnsId)>,
    selection: Selection,
    summary: Summary,
    last_draw: u64,
    events_at_last_draw: u64,
    terminal: DefaultTerminal,
}

impl Sink for TopSink {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        while let Some(item) = ring.next() {
            self.header.events += 1;
            match decode(&item) {
                // `--netns`: only those namespaces are modelled.
                Ok(ev)
                    if self.netns.is_empty()
                        || ev.netns == NetnsId(0)
                        || self.netns.contains(&ev.netns) =>
                {
                    self.observer.record(ev);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn dumped(&mut self, dumps: Dumps) -> io::Result<()> {
        self.observer.apply_dumps(dumps);
        Ok(())
    }

    fn tick(&mut self, now: u64) -> io::Result<Ticked> {
        let asked = read_keys(&mut self.selection, self.findings.len())?;
        if matches!(asked, Keys::Quit) {
            return Ok(Ticked {
                stop: true,
                ..Ticked::default()
            });
        }
        let read = self.counters.read().unwrap_or_default();
        let mut ticked = Ticked {
            ring_full: read.ringbuf_full,
            ..Ticked::default()
        };
        if now.saturating_sub(self.last_draw) >= self.refresh {
            self.observer.tick(now);
            ticked.reconcile = self.observer.take_reconcile_request();
            let elapsed = now.saturating_sub(self.last_draw) as f64 / 1e9;
            self.header.rate = if self.last_draw == 0 {
                0.0
            } else {
                (self.header.events - self.events_at_last_draw) as f64 / elapsed
            };
            self.events_at_last_draw = self.header.events;
            self.last_draw = now;
            self.header.lost = read.ringbuf_full + read.recursion_misses;
            self.findings = open_findings(&self.observer, &self.netns);
            self.selection.index = self
                .selection
                .index
                .min(self.findings.len().saturating_sub(1));
            self.summary = summarize(&self.observer.model, now, &self.netns, self.top);
            self.summary.name_units(self.observer.units());
            self.draw()?;
        } else if matches!(asked, Keys::Redraw) {
            self.draw()?;
        }
        Ok(ticked)
    }

    fn events_lost(&mut self, _now: u64) {
        self.observer.model.mark_uncertain();
    }
}

impl TopSink {
    fn draw(&mut self) -> io::Result<()> {
        draw(
            &mut self.terminal,
            &self.summary,
            &self.findings,
            &self.header,
            &self.selection,
        )
    }
}

/// `q` or Ctrl-C quits (raw mode turns Ctrl-C into a key); Up/Down (or
/// k/j) select a finding, Enter shows or hides its evidence and remedy, Esc
/// hides them (or quits when they are hidden).
fn read_keys(selection: &mut Selection, findings: usize) -> io::Result<Keys> {
    let mut asked = Keys::Nothing;
    while event::poll(Duration::ZERO)? {
        let Event::Key(key) = event::read()? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            _ if ctrl_c => return Ok(Keys::Quit),
            KeyCode::Char('q') => return Ok(Keys::Quit),
            KeyCode::Esc if !selection.details => return Ok(Keys::Quit),
            KeyCode::Esc => selection.details = false,
            KeyCode::Down | KeyCode::Char('j') => {
                selection.index = (selection.index + 1).min(findings.saturating_sub(1));
            }
            KeyCode::Up | KeyCode::Char('k') => selection.index = selection.index.saturating_sub(1),
            KeyCode::Enter => selection.details = !selection.details,
            _ => continue,
        }
        asked = Keys::Redraw;
    }
    Ok(asked)
}

/// Splits `text` into lines of at most `width` characters at spaces (a
/// longer word is cut).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(8);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word = word.to_owned();
        while word.chars().count() > width {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            lines.push(head);
        }
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

fn open_findings(observer: &Observer, netns: &[NetnsId]) -> Vec<(Finding, NetnsId)> {
    let mut open: Vec<(Finding, NetnsId)> = observer
        .detectors
        .iter()
        .flat_map(|d| d.open_findings())
        .filter(|(_, ns)| netns.is_empty() || netns.contains(ns))
        .map(|(f, ns)| (f.clone(), ns))
        .collect();
    open.sort_by(|a, b| {
        b.0.severity
            .cmp(&a.0.severity)
            .then_with(|| a.0.kind.name().cmp(b.0.kind.name()))
    });
    open
}

fn draw(
    terminal: &mut DefaultTerminal,
    s: &Summary,
    findings: &[(Finding, NetnsId)],
    header: &Header,
    selection: &Selection,
) -> io::Result<()> {
    terminal
        .draw(|frame| render(frame, s, findings, header, selection))
        .map(|_| ())
}

fn severity_style(severity: Severity) -> Style {
    match severity {
        Severity::Critical => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Severity::Warning => Style::new().fg(Color::Yellow),
        Severity::Info => Style::new().fg(Color::Cyan),
    }
}

fn render(
    frame: &mut Frame,
    s: &Summary,
    findings: &[(Finding, NetnsId)],
    header: &Header,
    selection: &Selection,
) {
    let [head, upper, middle, lower] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Min(4),
    ])
    .areas(frame.area());
    let lost = if header.lost > 0 {
        format!(" - {} events LOST", header.lost)
    } else {
        String::new()
    };
    frame.render_widget(
        Paragraph::new(Line::from(format!(
            "tcpwatch top - {} tracepoints - {} events ({:.0}/s){lost} - up/down select, enter details, q quits",
            header.attached, header.events, header.rate
        )))
        .style(Style::new().add_modifier(Modifier::REVERSED)),
        head,
    );

    let [states_area, tw_area] =
        Layout::horizontal([Constraint::Length(30), Constraint::Min(30)]).areas(upper);
    let state_rows = s
        .by_state
        .iter()
        .map(|(st, n)| Row::new([Cell::from(st.name()), Cell::from(n.to_string())]));
    frame.render_widget(
        Table::new(state_rows, [Constraint::Length(14), Constraint::Length(10)])
            .block(Block::bordered().title("Sockets by state")),
        states_area,
    );
    let tw_rows = s
        .time_wait
        .iter()
        .map(|(label, n)| Row::new([Cell::from(label.as_str()), Cell::from(n.to_string())]));
    frame.render_widget(
        Table::new(tw_rows, [Constraint::Min(24), Constraint::Length(10)])
            .header(
                Row::new(["ENDPOINT", "TIME_WAIT"])
                    .style(Style::new().add_modifier(Modifier::BOLD)),
            )
            .block(
                Block::bordered().title(
                    "TIME_WAIT by remote endpoint (server :PORT when this host closes first)",
                ),
            ),
        tw_area,
    );

    let cw_rows = s.close_wait.iter().map(|r| {
        let age = format!(
            "{}{:.1} s",
            if r.at_least { ">=" } else { "" },
            r.oldest_seconds
        );
        let pid = if r.pid == 0 {
            "-".to_owned()
        } else {
            r.pid.to_string()
        };
        let port = if r.local_port == 0 {
            "-".to_owned()
        } else {
            r.local_port.to_string()
        };
        let unit = if r.unit.is_empty() {
            "-".to_owned()
        } else {
            r.unit.clone()
        };
        Row::new([pid, r.comm.clone(), unit, port, r.count.to_string(), age])
    });
    frame.render_widget(
        Table::new(
            cw_rows,
            [
                Constraint::Length(8),
                Constraint::Length(16),
                Constraint::Length(24),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Min(10),
            ],
        )
        .header(
            Row::new(["PID", "COMM", "UNIT", "PORT", "COUNT", "OLDEST"])
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered().title("CLOSE_WAIT by process")),
        middle,
    );

    let (list_area, details_area) = if selection.details && !findings.is_empty() {
        let [list, details] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(lower);
        (list, Some(details))
    } else {
        (lower, None)
    };
    // The summary wraps within its column: borders, two spacings and the
    // two fixed columns take the rest.
    let summary_width = usize::from(list_area.width).saturating_sub(2 + 2 + 9 + 22);
    let finding_rows = findings.iter().enumerate().map(|(i, (f, _))| {
        let lines = wrap(&f.summary, summary_width);
        let height = lines.len() as u16;
        let mut style = severity_style(f.severity);
        if i == selection.index {
            style = style.add_modifier(Modifier::REVERSED);
        }
        Row::new([
            Cell::from(f.severity.name()),
            Cell::from(f.kind.name()),
            Cell::from(lines.join("\n")),
        ])
        .height(height)
        .style(style)
    });
    frame.render_widget(
        Table::new(
            finding_rows,
            [
                Constraint::Length(9),
                Constraint::Length(22),
                Constraint::Min(20),
            ],
        )
        .block(Block::bordered().title(format!("Open findings ({})", findings.len()))),
        list_area,
    );
    if let (Some(area), Some((f, netns))) = (details_area, findings.get(selection.index)) {
        let mut text = vec![
            Line::from(format!("{} {} (netns {netns})", f.severity.name(), f.kind)),
            Line::from(""),
            Line::from(f.summary.clone()),
            Line::from(""),
            Line::from("Evidence:").style(Style::new().add_modifier(Modifier::BOLD)),
        ];
        for (name, value) in &f.rendered_evidence() {
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            text.push(Line::from(format!("  {name}: {value}")));
        }
        text.push(Line::from(""));
        text.push(Line::from("Remedy:").style(Style::new().add_modifier(Modifier::BOLD)));
        text.push(Line::from(f.remedy.clone()));
        frame.render_widget(
            Paragraph::new(text)
                .wrap(Wrap { trim: true })
                .block(Block::bordered().title("Finding (enter or esc closes)")),
            area,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wraps_at_spaces_and_cuts_long_words() {
        assert_eq!(
            wrap("tw-leaky (pid 12) holds 2 connections", 16),
            ["tw-leaky (pid", "12) holds 2", "connections"]
        );
        assert_eq!(
            wrap("aaaaaaaaaaaaaaaaaaaa b", 8),
            ["aaaaaaaa", "aaaaaaaa", "aaaa b"]
        );
        assert_eq!(wrap("", 10), [""]);
    }
}

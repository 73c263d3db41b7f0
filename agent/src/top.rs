//! `nodesat top`: a live terminal view of each report, redrawn every interval.
//!
//! One row per entity of the report (run-queue p99, waiting tasks, throttled %, iowait,
//! retransmits per second, OOM kills), sortable by any column; a per-CPU run-queue bar; the
//! latest OOM kill on the bottom line the moment it happens. It fits 80 columns (labels are
//! shortened). When stdout is not a terminal it prints the plain table every interval instead.

use std::{
    io::IsTerminal as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
        execute,
        terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
    },
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::Paragraph,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::{
    collector::oom::OomKill,
    config::{Config, Output},
    output::{Emitter, human_ns},
    probes::HookStatus,
    report::{CgroupReport, Report},
};

/// How the reports are shown: the `run` stream (table or JSON lines), or `top`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Stream,
    Top,
}

impl View {
    /// Whether `top` draws the live view: stdout is a terminal. (Then logs below ERROR are
    /// silenced when stderr is the same terminal, so they do not scribble over the view.)
    pub fn live(self) -> bool {
        self == View::Top && std::io::stdout().is_terminal()
    }
}

/// The sortable columns, in the order of keys 1–7.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    P99,
    Waiting,
    /// Tasks it kept waiting (its own included), on average: the wait it caused ÷ interval.
    Caused,
    Throttled,
    Iowait,
    Retransmits,
    Oom,
}

impl Column {
    pub const ALL: [Column; 7] = [
        Column::P99,
        Column::Waiting,
        Column::Caused,
        Column::Throttled,
        Column::Iowait,
        Column::Retransmits,
        Column::Oom,
    ];

    fn title(self) -> &'static str {
        match self {
            Column::P99 => "RQ_P99",
            Column::Waiting => "WAITING",
            Column::Caused => "CAUSED",
            Column::Throttled => "THROT%",
            Column::Iowait => "IOWAIT",
            Column::Retransmits => "RETX/s",
            Column::Oom => "OOM",
        }
    }

    fn width(self) -> usize {
        match self {
            Column::P99 => 8,
            Column::Waiting => 9,
            Column::Caused => 8,
            Column::Throttled => 7,
            Column::Iowait => 8,
            Column::Retransmits => 8,
            Column::Oom => 5,
        }
    }

    fn next(self) -> Column {
        let i = Column::ALL.iter().position(|&c| c == self).unwrap_or(0);
        Column::ALL[(i + 1) % Column::ALL.len()]
    }
}

/// One entity's figures as `top` shows them.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub label: String,
    pub p99_ns: u64,
    pub waiting: f64,
    /// Average number of tasks (any cgroup's) waiting while its tasks ran on their CPU.
    pub caused: f64,
    /// `None` without a CPU limit.
    pub throttled_pct: Option<f64>,
    /// Average number of its tasks blocked on I/O.
    pub iowait: f64,
    pub retransmits_per_s: f64,
    pub oom_kills: u64,
}

impl Row {
    pub fn new(c: &CgroupReport, interval_ns: u64) -> Row {
        let label = crate::identity::table_label(c.name.as_deref(), &c.identity, c.cgroup_id);
        let interval = interval_ns.max(1) as f64;
        Row {
            label,
            p99_ns: c.runqueue.latency_p99_ns,
            waiting: c.runqueue.waiting_tasks,
            caused: c.runqueue.caused_ns as f64 / interval,
            throttled_pct: c.throttling.as_ref().map(|t| t.throttled_pct),
            iowait: c.iowait_ns as f64 / interval,
            retransmits_per_s: c.retransmits() as f64 / (interval / 1e9),
            oom_kills: c.oom_kills,
        }
    }

    /// The value sorted on (larger is worse).
    fn key(&self, col: Column) -> f64 {
        match col {
            Column::P99 => self.p99_ns as f64,
            Column::Waiting => self.waiting,
            Column::Caused => self.caused,
            Column::Throttled => self.throttled_pct.unwrap_or(-1.0),
            Column::Iowait => self.iowait,
            Column::Retransmits => self.retransmits_per_s,
            Column::Oom => self.oom_kills as f64,
        }
    }

    /// Whether the figure in `col` is bad enough to highlight.
    pub fn alarming(&self, col: Column) -> bool {
        match col {
            Column::P99 => self.p99_ns >= 10_000_000,
            Column::Waiting => self.waiting >= 1.0,
            Column::Caused => self.caused >= 1.0,
            Column::Throttled => self.throttled_pct.is_some_and(|p| p >= 25.0),
            Column::Iowait => self.iowait >= 1.0,
            Column::Retransmits => self.retransmits_per_s > 0.0,
            Column::Oom => self.oom_kills > 0,
        }
    }

    fn cell(&self, col: Column) -> String {
        match col {
            Column::P99 => human_ns(self.p99_ns),
            Column::Waiting => format!("{:.2}", self.waiting),
            Column::Caused => format!("{:.2}", self.caused),
            Column::Throttled => self
                .throttled_pct
                .map_or("-".to_owned(), |p| format!("{p:.0}")),
            Column::Iowait => format!("{:.2}", self.iowait),
            Column::Retransmits => format!("{:.1}", self.retransmits_per_s),
            Column::Oom => self.oom_kills.to_string(),
        }
    }
}

/// What the view shows: the latest report, the sort order, the latest OOM kill.
#[derive(Debug)]
pub struct State {
    pub report: Option<Report>,
    pub sort: Column,
    pub reversed: bool,
    pub last_kill: Option<OomKill>,
    pub kills_seen: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            report: None,
            sort: Column::Waiting,
            reversed: false,
            last_kill: None,
            kills_seen: 0,
        }
    }
}

/// What a key press asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Redraw,
    Quit,
    Nothing,
}

impl State {
    /// Rows sorted by the sort column, worst first (unless reversed); ties by label.
    pub fn rows(&self) -> Vec<Row> {
        let Some(r) = &self.report else {
            return Vec::new();
        };
        let mut rows: Vec<Row> = r
            .cgroups
            .iter()
            .map(|c| Row::new(c, r.interval_ns))
            .collect();
        rows.sort_by(|a, b| {
            let by_key = b.key(self.sort).total_cmp(&a.key(self.sort));
            let by_key = if self.reversed {
                by_key.reverse()
            } else {
                by_key
            };
            by_key.then_with(|| a.label.cmp(&b.label))
        });
        rows
    }

    pub fn key(&mut self, k: KeyEvent) -> Action {
        if k.kind == KeyEventKind::Release {
            return Action::Nothing;
        }
        match k.code {
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
            KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
            KeyCode::Char(d @ '1'..='7') => {
                self.sort = Column::ALL[d as usize - '1' as usize];
                Action::Redraw
            }
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                Action::Redraw
            }
            KeyCode::Char('r') => {
                self.reversed = !self.reversed;
                Action::Redraw
            }
            _ => Action::Nothing,
        }
    }

    /// The whole screen as lines, each at most `width` characters, at most `height` lines.
    pub fn lines(&self, width: u16, height: u16) -> Vec<Line<'static>> {
        let width = usize::from(width);
        let height = usize::from(height);
        let mut out = Vec::new();
        let bold = Style::default().add_modifier(Modifier::BOLD);
        let alarm = Style::default().fg(Color::Red);

        let when = self
            .report
            .as_ref()
            .map(|r| {
                let t = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_nanos(r.time_unix_ns),
                );
                format!("{t}  {:.1}s", r.interval_ns as f64 / 1e9)
            })
            .unwrap_or_else(|| "waiting for the first interval…".into());
        out.push(Line::from(vec![
            Span::styled("nodesat top", bold),
            Span::raw(clip(
                &format!("  {when}  keys: 1-7/s sort, r reverse, q quit"),
                width.saturating_sub(11),
            )),
        ]));
        out.push(self.cpu_line(width));
        let node = match &self.report {
            Some(r) => format!(
                "node: {:.1} TCP retransmits/s, {} OOM kills, {} cgroups{}",
                r.node.tcp_retransmits as f64 / (r.interval_ns.max(1) as f64 / 1e9),
                r.node.oom_kills,
                r.cgroups.len(),
                if r.entities_overflow > 0 {
                    format!(" (+{} summed as other)", r.entities_overflow)
                } else {
                    String::new()
                }
            ),
            None => "node: -".into(),
        };
        out.push(Line::raw(clip(&node, width)));

        let fixed: usize = Column::ALL.iter().map(|c| c.width()).sum();
        let label_w = width.saturating_sub(fixed).max(8);
        let mut header = vec![Span::styled(
            format!("{:<label_w$}", clip("CGROUP", label_w)),
            bold,
        )];
        for col in Column::ALL {
            let arrow = if col != self.sort {
                ' '
            } else if self.reversed {
                '▲'
            } else {
                '▼'
            };
            let title = format!("{}{arrow}", col.title());
            let style = if col == self.sort {
                bold.add_modifier(Modifier::REVERSED)
            } else {
                bold
            };
            header.push(Span::styled(format!("{title:>w$}", w = col.width()), style));
        }
        out.push(Line::from(header));

        let rows = self.rows();
        let room = height.saturating_sub(out.len() + 1);
        let shown = if rows.len() > room {
            room.saturating_sub(1)
        } else {
            rows.len()
        };
        for (i, row) in rows.iter().take(shown).enumerate() {
            let worst = i == 0 && row.alarming(self.sort);
            let base = if worst {
                bold.fg(Color::Red)
            } else {
                Style::default()
            };
            let mut spans = vec![Span::styled(
                format!("{:<label_w$}", shorten(&row.label, label_w - 1)),
                base,
            )];
            for col in Column::ALL {
                let style = if row.alarming(col) {
                    base.patch(alarm)
                } else {
                    base
                };
                spans.push(Span::styled(
                    format!("{:>w$}", row.cell(col), w = col.width()),
                    style,
                ));
            }
            out.push(Line::from(spans));
        }
        if shown < rows.len() {
            out.push(Line::raw(format!("… {} more", rows.len() - shown)));
        }
        while out.len() + 1 < height {
            out.push(Line::raw(""));
        }
        out.push(match &self.last_kill {
            Some(k) => Line::styled(
                clip(
                    &format!(
                        "OOM KILL #{}: pid {} ({}) in {} [{}]",
                        self.kills_seen,
                        k.pid,
                        k.comm,
                        k.cgroup
                            .clone()
                            .unwrap_or_else(|| format!("cgroup id {}", k.cgroup_id)),
                        k.constraint_text()
                    ),
                    width,
                ),
                bold.fg(Color::White).bg(Color::Red),
            ),
            None => Line::raw(clip("no OOM kill since start", width)),
        });
        out.truncate(height.max(1));
        out
    }

    /// `cpu0 ██▌ 2.0  cpu1 ██ 1.9 …`: one cell per waiting task (at most 4), in eighths.
    fn cpu_line(&self, width: usize) -> Line<'static> {
        let Some(r) = &self.report else {
            return Line::raw("cpu: -");
        };
        let mut spans = Vec::new();
        let mut used = 0;
        for (i, c) in r.cpus.iter().enumerate() {
            let bar = bar(c.runqueue_length, 4);
            let text = format!("cpu{} ", c.cpu);
            let value = format!(" {:.1}  ", c.runqueue_length);
            let len = text.chars().count() + bar.chars().count() + value.chars().count();
            let rest = r.cpus.len() - i;
            if used + len > width.saturating_sub(if rest > 1 { 6 } else { 0 }) {
                spans.push(Span::raw(format!("…+{rest}")));
                break;
            }
            used += len;
            let style = if c.runqueue_length >= 1.0 {
                Style::default().fg(Color::Red)
            } else {
                Style::default().fg(Color::Green)
            };
            spans.push(Span::raw(text));
            spans.push(Span::styled(bar, style));
            spans.push(Span::raw(value));
        }
        Line::from(spans)
    }
}

/// A bar of `value` cells in eighths, at most `max` cells.
pub fn bar(value: f64, max: usize) -> String {
    const EIGHTHS: [char; 8] = ['▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];
    let eighths = (value.clamp(0.0, max as f64) * 8.0).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    if let Some(&part) = (eighths % 8).checked_sub(1).and_then(|i| EIGHTHS.get(i)) {
        s.push(part);
    }
    s
}

/// At most `n` characters, cut at the end.
fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// At most `n` characters: the start and the end kept, "…" between (the end of a path or
/// label is its most telling part).
pub fn shorten(s: &str, n: usize) -> String {
    let len = s.chars().count();
    if len <= n {
        return s.to_owned();
    }
    if n < 2 {
        return clip(s, n);
    }
    let head = (n - 1) / 3;
    let tail = n - 1 - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(len - tail));
    out
}

/// Where reports go: the `run` emitter, or the live terminal view.
pub enum Display {
    Plain(Emitter),
    Live(Box<Live>),
}

impl Display {
    pub fn new(config: &Config, view: View) -> anyhow::Result<Display> {
        Ok(match view {
            View::Stream => Display::Plain(Emitter::new(config.output, config.top)),
            View::Top if !view.live() => Display::Plain(Emitter::new(Output::Table, config.top)),
            View::Top => Display::Live(Box::new(Live::start()?)),
        })
    }

    /// Key presses of the live view (`None` for the plain output).
    pub fn take_keys(&mut self) -> Option<UnboundedReceiver<KeyEvent>> {
        match self {
            Display::Plain(_) => None,
            Display::Live(l) => l.keys.take(),
        }
    }

    pub fn ready(&mut self, probes: &[HookStatus]) {
        match self {
            Display::Plain(e) => e.ready(probes),
            Display::Live(l) => l.draw(),
        }
    }

    pub fn report(&mut self, report: &Report) {
        match self {
            Display::Plain(e) => e.report(report),
            Display::Live(l) if report.is_final => {
                // Back to the normal screen, leaving the last figures on it.
                l.restore();
                Emitter::new(Output::Table, usize::MAX).report(report);
            }
            Display::Live(l) => {
                l.state.report = Some(report.clone());
                l.draw();
            }
        }
    }

    pub fn oom_kill(&mut self, kill: &OomKill) {
        match self {
            Display::Plain(e) => e.oom_kill(kill),
            Display::Live(l) => {
                l.state.kills_seen += 1;
                l.state.last_kill = Some(kill.clone());
                l.draw();
            }
        }
    }

    /// The first failed write to stdout, once (the plain output; the live view draws on a
    /// terminal).
    pub fn take_stdout_failure(&mut self) -> Option<crate::output::StdoutError> {
        match self {
            Display::Plain(e) => e.take_failure(),
            Display::Live(_) => None,
        }
    }

    /// Writes nothing more (stdout's reader went away).
    pub fn stop_writing(&mut self) {
        if let Display::Plain(e) = self {
            e.stop_writing();
        }
    }

    /// Handles a key press; true when it asks to quit.
    pub fn key(&mut self, key: KeyEvent) -> bool {
        let Display::Live(l) = self else {
            return false;
        };
        match l.state.key(key) {
            Action::Quit => {
                l.restore();
                true
            }
            Action::Redraw => {
                l.draw();
                false
            }
            // Resizes come through as a key of code Null: redraw at the new size.
            Action::Nothing => {
                if key.code == KeyCode::Null {
                    l.draw();
                }
                false
            }
        }
    }
}

/// The next key press, or never when there is no live view.
pub async fn next_key(keys: &mut Option<UnboundedReceiver<KeyEvent>>) -> KeyEvent {
    match keys {
        Some(rx) => match rx.recv().await {
            Some(k) => k,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The live view: the terminal in raw mode on its alternate screen, and a thread reading keys.
pub struct Live {
    terminal: Terminal<CrosstermBackend<std::io::Stdout>>,
    state: State,
    keys: Option<UnboundedReceiver<KeyEvent>>,
    stop_reader: Arc<AtomicBool>,
    active: bool,
}

impl Live {
    fn start() -> anyhow::Result<Live> {
        enable_raw_mode()?;
        let mut stdout = std::io::stdout();
        if let Err(e) = execute!(stdout, EnterAlternateScreen, cursor::Hide) {
            let _ = disable_raw_mode();
            return Err(e.into());
        }
        let mut live = Live {
            terminal: Terminal::new(CrosstermBackend::new(stdout))?,
            state: State::default(),
            keys: None,
            stop_reader: Arc::new(AtomicBool::new(false)),
            active: true,
        };
        live.terminal.clear()?;
        let (tx, rx) = unbounded_channel();
        live.keys = Some(rx);
        let stop = live.stop_reader.clone();
        std::thread::Builder::new()
            .name("nodesat-top-keys".into())
            .spawn(move || read_keys(&tx, &stop))?;
        Ok(live)
    }

    fn draw(&mut self) {
        if !self.active {
            return;
        }
        let state = &self.state;
        let _ = self.terminal.draw(|f| {
            let area = f.area();
            f.render_widget(Paragraph::new(state.lines(area.width, area.height)), area);
        });
    }

    /// Leaves raw mode and the alternate screen (once).
    fn restore(&mut self) {
        if !std::mem::take(&mut self.active) {
            return;
        }
        self.stop_reader.store(true, Ordering::Relaxed);
        let _ = disable_raw_mode();
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Forwards key presses (and resizes, as `KeyCode::Null`) until told to stop.
fn read_keys(tx: &UnboundedSender<KeyEvent>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match event::poll(Duration::from_millis(100)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return,
        }
        let key = match event::read() {
            Ok(Event::Key(k)) => k,
            Ok(Event::Resize(..)) => KeyEvent::new(KeyCode::Null, KeyModifiers::NONE),
            Ok(_) => continue,
            Err(_) => return,
        };
        if tx.send(key).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        CpuReport, NodeTotals, RunqueueFigures, Sources, TcpRetransmits, Throttling,
    };

    fn cgroup(
        id: u64,
        name: &str,
        waiting: f64,
        throttled: Option<f64>,
        retx: u64,
    ) -> CgroupReport {
        let mut c = CgroupReport::new(id);
        c.name = Some(name.into());
        c.identity = crate::identity::Identity::cgroup(name);
        c.runqueue = RunqueueFigures {
            waiting_tasks: waiting,
            latency_p99_ns: (waiting * 1e6) as u64,
            ..RunqueueFigures::default()
        };
        c.throttling = throttled.map(|p| Throttling {
            periods: 100,
            throttled_periods: p as u64,
            throttled_ns: 0,
            throttled_pct: p,
            durations: None,
        });
        c.tcp_retransmits = vec![TcpRetransmits {
            family: "ipv4",
            kind: "data",
            cause: "fast",
            count: retx,
        }];
        c
    }

    fn report() -> Report {
        Report {
            kind: "interval",
            is_final: false,
            time_unix_ns: 1_700_000_000_000_000_000,
            interval_ns: 2_000_000_000,
            cgroups: vec![
                cgroup(1, "/light", 0.1, None, 10),
                cgroup(2, "/busy", 4.0, None, 0),
                cgroup(3, "/capped", 0.3, Some(96.0), 0),
                cgroup(
                    4,
                    "/kubepods.slice/kubepods-burstable.slice/a-very-long-cgroup-name.scope",
                    0.05,
                    None,
                    0,
                ),
            ],
            other: None,
            entities_overflow: 0,
            cpus: (0..32)
                .map(|cpu| CpuReport {
                    cpu,
                    runqueue_wait_ns: 0,
                    runqueue_length: 2.5,
                    iowait_ns: 0,
                    proc_stat_iowait_ns: 0,
                })
                .collect(),
            disks: vec![],
            sources: Sources {
                throttling: "cpu.stat",
            },
            probes: vec![],
            node: NodeTotals {
                tcp_retransmits: 10,
                oom_kills: 0,
                pressure: None,
            },
            kernel_errors: vec![],
            maps: vec![],
            map_memory: vec![],
        }
    }

    fn text(line: &Line) -> String {
        line.spans.iter().map(|s| s.content.as_ref()).collect()
    }

    fn press(state: &mut State, c: char) -> Action {
        state.key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
    }

    #[test]
    fn sorts_by_any_column_and_reverses() {
        let mut s = State {
            report: Some(report()),
            ..State::default()
        };
        assert_eq!(s.rows()[0].label, "/busy", "default: waiting, descending");
        assert_eq!(press(&mut s, '4'), Action::Redraw);
        assert_eq!(s.rows()[0].label, "/capped");
        press(&mut s, '6');
        assert_eq!(s.rows()[0].label, "/light");
        assert_eq!(s.rows()[0].retransmits_per_s, 5.0);
        press(&mut s, 'r');
        assert_eq!(s.rows()[3].label, "/light");
        press(&mut s, 's');
        assert_eq!(s.sort, Column::Oom);
        press(&mut s, 's');
        assert_eq!(s.sort, Column::P99);
        assert_eq!(press(&mut s, 'q'), Action::Quit);
        assert_eq!(
            s.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
        assert_eq!(
            s.key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)),
            Action::Quit
        );
    }

    #[test]
    fn fits_80_by_24() {
        let mut s = State {
            report: Some(report()),
            ..State::default()
        };
        let mut r = report();
        for i in 0..40 {
            r.cgroups
                .push(cgroup(100 + i, &format!("/extra{i}"), 0.0, None, 0));
        }
        s.report = Some(r);
        s.last_kill = Some(OomKill {
            kind: "oom_kill",
            time_unix_ns: 1,
            pid: 42,
            tid: 42,
            comm: "hog".into(),
            cgroup_id: 7,
            cgroup: Some("/xoom".into()),
            constraint: "memcg",
            constraint_cgroup: Some("/xoom".into()),
            constraint_source: "kernel",
            oom_score_adj: Some(0),
        });
        s.kills_seen = 1;
        let lines = s.lines(80, 24);
        assert_eq!(lines.len(), 24);
        for l in &lines {
            assert!(l.width() <= 80, "{:?} is {} wide", text(l), l.width());
        }
        let all: Vec<String> = lines.iter().map(text).collect();
        assert!(all[1].starts_with("cpu0 ██▌ 2.5"), "{}", all[1]);
        assert!(all[1].contains('…'), "{}", all[1]);
        assert!(all[4].starts_with("/busy "), "{all:#?}");
        assert!(
            all[4].contains("4.00") && all[4].contains("-"),
            "{}",
            all[4]
        );
        assert!(all[22].starts_with("… "), "{all:#?}");
        assert_eq!(
            all[23],
            "OOM KILL #1: pid 42 (hog) in /xoom [memcg OOM of /xoom]"
        );
        assert!(
            all.iter()
                .any(|l| l.starts_with("/kubepod…") && l.contains("name.scope")),
            "{all:#?}"
        );
        // The worst row is bold red when its sort figure is alarming.
        assert_eq!(lines[4].spans[0].style.fg, Some(Color::Red));
        assert!(lines[5].spans[0].style.fg.is_none());
    }

    #[test]
    fn bars_and_shortening() {
        assert_eq!(bar(2.0, 4), "██");
        assert_eq!(bar(2.5, 4), "██▌");
        assert_eq!(bar(9.0, 4), "████");
        assert_eq!(bar(0.0, 4), "");
        assert_eq!(shorten("/abcdefghij", 7), "/a…ghij");
        assert_eq!(shorten("/abc", 7), "/abc");
    }
}

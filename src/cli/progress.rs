//! Progress bars (indicatif) for the library's [`Progress`] hooks: one bar
//! per pass with rate and ETA, drawn on stderr only when it is a terminal
//! and `--quiet` is off. Warnings always go to stderr.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use dprune::pipeline::{Pass, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Terminal progress bars.
pub struct Bars {
    show: bool,
    current: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// Bars that draw only if `!quiet` and stderr is a terminal.
    pub fn new(quiet: bool) -> Self {
        Bars {
            show: !quiet && std::io::stderr().is_terminal(),
            current: Mutex::new(None),
        }
    }
}

impl Progress for Bars {
    fn begin(&self, pass: Pass, total: u64) {
        let bar = if self.show {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let tpl = format!(
                "{{prefix:>8}} [{{bar:40.cyan/blue}}] {{human_pos}}/{{human_len}} {unit} {{per_sec}} ETA {{eta}}",
                unit = pass.unit()
            );
            b.set_style(
                ProgressStyle::with_template(&tpl)
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b.set_prefix(pass.name());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        } else {
            ProgressBar::hidden()
        };
        *self.current.lock().expect("progress lock") = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(b) = self.current.lock().expect("progress lock").as_ref() {
            b.inc(n);
        }
    }

    fn end(&self) {
        if let Some(b) = self.current.lock().expect("progress lock").take() {
            b.finish();
        }
    }

    fn warn(&self, message: &str) {
        let guard = self.current.lock().expect("progress lock");
        match guard.as_ref() {
            Some(b) if self.show => b.suspend(|| eprintln!("warning: {message}")),
            _ => eprintln!("warning: {message}"),
        }
    }
}

//! The human table and the JSON document of one run.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;

pub struct Report {
    pub lines: Vec<String>,
    pub json: Value,
}

impl Report {
    pub fn print(&self) {
        for line in &self.lines {
            println!("{line}");
        }
    }
}

/// Formats rows as an aligned text table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    let fmt = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:>w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = vec![fmt(header.to_vec())];
    out.push(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    for row in rows {
        out.push(fmt(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Errors by kind, counted, never hidden.
#[derive(Default)]
pub struct Errors {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl Errors {
    pub fn add(&self, error: &anyhow::Error) {
        let mut text = format!("{error:#}");
        // Group errors that differ only in details such as ports or ids.
        text.truncate(100);
        if let Ok(mut map) = self.counts.lock() {
            *map.entry(text).or_default() += 1;
        }
    }

    pub fn add_kind(&self, kind: &str) {
        if let Ok(mut map) = self.counts.lock() {
            *map.entry(kind.to_owned()).or_default() += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn lines(&self) -> Vec<String> {
        let snap = self.snapshot();
        if snap.is_empty() {
            return vec!["errors: none".into()];
        }
        let mut out = vec![format!("errors: {} in all", self.total())];
        for (k, v) in snap {
            out.push(format!("  {v:>7} × {k}"));
        }
        out
    }
}

pub fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

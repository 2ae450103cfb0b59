//! Results: the README table (figure, peer figure, ratio, machine, command) and a JSON copy.

use std::path::Path;

/// One benchmark figure with its peer's.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub name: String,
    pub skiff: f64,
    pub peer: f64,
    pub unit: String,
    pub peer_name: String,
    pub higher_is_better: bool,
    pub goal: String,
    pub note: String,
}

impl Measurement {
    pub fn higher_better(
        name: &str,
        skiff: f64,
        peer: f64,
        unit: &str,
        peer_name: &str,
        goal: &str,
    ) -> Self {
        Measurement {
            name: name.into(),
            skiff,
            peer,
            unit: unit.into(),
            peer_name: peer_name.into(),
            higher_is_better: true,
            goal: goal.into(),
            note: String::new(),
        }
    }

    pub fn lower_better(
        name: &str,
        skiff: f64,
        peer: f64,
        unit: &str,
        peer_name: &str,
        goal: &str,
    ) -> Self {
        Measurement {
            higher_is_better: false,
            ..Self::higher_better(name, skiff, peer, unit, peer_name, goal)
        }
    }

    /// How many times better Skiff is (> 1: better).
    pub fn ratio(&self) -> f64 {
        if self.higher_is_better {
            self.skiff / self.peer
        } else {
            self.peer / self.skiff
        }
    }
}

fn fmt(x: f64, unit: &str) -> String {
    let v = if x >= 100.0 {
        let n = x.round() as u64;
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    };
    format!("{v} {unit}")
}

/// The markdown table.
pub fn table(results: &[Measurement], machine: &str, command: &str) -> String {
    let mut t = String::from(
        "| benchmark | Skiff | peer | peer figure | ratio | goal |\n|---|---|---|---|---|---|\n",
    );
    for m in results {
        let note = if m.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", m.note)
        };
        t.push_str(&format!(
            "| {}{note} | {} | {} | {} | {:.2}x | {} |\n",
            m.name,
            fmt(m.skiff, &m.unit),
            m.peer_name,
            fmt(m.peer, &m.unit),
            m.ratio(),
            if m.goal.is_empty() { "-" } else { &m.goal }
        ));
    }
    t.push_str(&format!("\nMachine: {machine}. Command: `{command}`. Ratio: how many times better Skiff is than the peer (higher throughput, or lower latency/memory), median of the runs.\n"));
    t
}

/// Replaces the table between the README's bench markers.
pub fn write_readme(readme: &Path, table: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(readme)?;
    let (start, end) = ("<!-- bench:start -->", "<!-- bench:end -->");
    let (Some(a), Some(b)) = (text.find(start), text.find(end)) else {
        anyhow::bail!("README has no bench markers");
    };
    let updated = format!("{}{start}\n{table}{}", &text[..a], &text[b..]);
    std::fs::write(readme, updated)?;
    Ok(())
}

//! Reporting helpers: UTC dates without a date crate, number formatting, the build's git
//! commit, and the marked sections of RESULTS.md.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Unix seconds -> `YYYY-MM-DDTHH:MM:SSZ`.
pub fn iso_utc(secs: i64) -> String {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Now as `YYYY-MM-DD HH:MM UTC`.
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let iso = iso_utc(secs);
    format!("{} {} UTC", &iso[..10], &iso[11..16])
}

/// `1234567.8` -> `1,234,568`.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// The short git commit of the workspace this harness was built from, `+dirty` if it has
/// uncommitted changes; `unknown` without git.
pub fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let run = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            let dirty = run(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit}+dirty")
            } else {
                commit
            }
        }
        _ => "unknown".to_owned(),
    }
}

/// The command that reproduces this run, as run from the workspace root.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("target/release/tidesync-bench {}", args.join(" "))
}

/// A one-line description of the machine: CPU model, cores, kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{model}, {cores} cores, Linux {kernel}")
}

/// The 1-minute load average (/proc/loadavg), to flag runs that shared the machine.
pub fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Adds `row` to the table between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `path`,
/// keeping the rows already there and regenerating everything else in the section (`intro`,
/// then the table `header`). Without markers, the section is appended at the end of the file.
pub fn add_result_row(
    path: &Path,
    name: &str,
    intro: &str,
    header: &[&str],
    row: &[String],
) -> anyhow::Result<()> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let (before, old, after) = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => (
            &text[..b],
            &text[b + begin.len()..e],
            &text[e + end.len()..],
        ),
        (None, None) => (text.as_str(), "", "\n"),
        _ => bail!(
            "{}: the markers {begin} and {end} are missing one half or out of order",
            path.display()
        ),
    };
    let header_line = format!("| {} |", header.join(" | "));
    let separator = format!("|{}", "---|".repeat(header.len()));
    // The old table's rows: its header (the line above a `|---` separator, whatever
    // columns it named: a benchmark may add one) and separator give way to the new ones.
    let lines: Vec<&str> = old.lines().collect();
    let mut rows: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|&(i, l)| {
            let is_header = lines.get(i + 1).is_some_and(|n| n.starts_with("|---"));
            l.starts_with('|') && !l.starts_with("|---") && !is_header
        })
        .map(|(_, l)| *l)
        .collect();
    let new_row = format!("| {} |", row.join(" | "));
    rows.push(&new_row);
    let mut section = String::new();
    section.push_str(&begin);
    section.push('\n');
    section.push_str(intro.trim_end());
    section.push_str("\n\n");
    section.push_str(&header_line);
    section.push('\n');
    section.push_str(&separator);
    section.push('\n');
    for r in rows {
        section.push_str(r);
        section.push('\n');
    }
    section.push_str(&end);
    let mut before = before.to_owned();
    if !before.is_empty() && !before.ends_with('\n') {
        before.push('\n');
    }
    let out = format!("{before}{section}{after}");
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// The number after ` NAME=` in a tidesync log line (`ms=42`, `wire_bytes=1234`).
pub fn log_field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The lines of the log at `path` that contain `marker` (none if it cannot be read yet).
pub fn log_lines(path: &std::path::Path, marker: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(marker))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(1_704_067_200), "2024-01-01T00:00:00Z");
        assert_eq!(iso_utc(1_709_164_800 + 86_399), "2024-02-29T23:59:59Z");
        assert_eq!(iso_utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn numbers() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }

    #[test]
    fn result_rows_accumulate_between_markers() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("RESULTS.md");
        std::fs::write(&path, "# Results\n\nintro text\n")?;
        add_result_row(
            &path,
            "b",
            "About b.",
            &["x", "y"],
            &["1".into(), "2".into()],
        )?;
        add_result_row(
            &path,
            "b",
            "About b, v2.",
            &["x", "y"],
            &["3".into(), "4".into()],
        )?;
        let text = std::fs::read_to_string(&path)?;
        assert_eq!(
            text,
            "# Results\n\nintro text\n<!-- b:begin -->\nAbout b, v2.\n\n| x | y |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n<!-- b:end -->\n"
        );
        // A column added: the old header goes, the old rows stay (one cell short).
        add_result_row(
            &path,
            "b",
            "About b, v3.",
            &["x", "y", "z"],
            &["5".into(), "6".into(), "7".into()],
        )?;
        let text = std::fs::read_to_string(&path)?;
        assert_eq!(
            text,
            "# Results\n\nintro text\n<!-- b:begin -->\nAbout b, v3.\n\n| x | y | z |\n|---|---|---|\n| 1 | 2 |\n| 3 | 4 |\n| 5 | 6 | 7 |\n<!-- b:end -->\n"
        );
        Ok(())
    }
}

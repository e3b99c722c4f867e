//! Reading the server's (and our own) resource use from /proc.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};

/// The server processes whose memory and CPU are measured: the PIDs given,
/// and the processes named (found again at every reading: a database forks a
/// process per connection, some opened while the load runs).
#[derive(Clone, Debug, Default)]
pub struct Procs {
    /// Every process, as found at the start.
    pub pids: Vec<u32>,
    given: Vec<u32>,
    names: Vec<String>,
}

/// CPU time per server process at one instant, in microseconds.
#[derive(Clone, Debug, Default)]
pub struct CpuSample(HashMap<u32, u64>);

impl CpuSample {
    /// Server CPU time spent since `before`: a process that started since
    /// counts all its time; one that ended since loses what it spent after
    /// `before` (not readable any more).
    pub fn since(&self, before: &CpuSample) -> u64 {
        self.0
            .iter()
            .map(|(pid, now)| now.saturating_sub(before.0.get(pid).copied().unwrap_or(0)))
            .sum()
    }
}

impl Procs {
    /// Explicit PIDs plus every process whose `comm` equals one of `names`.
    pub fn resolve(pids: &[u32], names: &[String]) -> Result<Procs> {
        let mut out: Vec<u32> = pids.to_vec();
        let found = named(names)?;
        if !names.is_empty() && found.is_empty() {
            bail!("no process is named {}", names.join(" or "));
        }
        out.extend(found);
        out.sort_unstable();
        out.dedup();
        for pid in &out {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                bail!("server process {pid} does not exist");
            }
        }
        Ok(Procs {
            pids: out,
            given: pids.to_vec(),
            names: names.to_vec(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// Sum of VmRSS over the processes, in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        Some(
            self.each(|pid| rss_of(&format!("/proc/{pid}/status")))?
                .values()
                .sum(),
        )
    }

    /// Sum of RssFile over the processes (pages of files mapped: the
    /// binary's code and data first of all), in bytes.
    pub fn rss_file_bytes(&self) -> Option<u64> {
        Some(
            self.each(|pid| rss_file_of(&format!("/proc/{pid}/status")))?
                .values()
                .sum(),
        )
    }

    /// utime+stime of each process.
    pub fn cpu_sample(&self) -> Option<CpuSample> {
        self.each(|pid| cpu_of(&format!("/proc/{pid}/stat")))
            .map(CpuSample)
    }

    /// `read` of each process now: the PIDs given (`None` once one of them
    /// has gone: the server stopped) and those named, found again now (one
    /// gone between the listing and the reading counts for nothing).
    fn each(&self, read: impl Fn(u32) -> Result<u64>) -> Option<HashMap<u32, u64>> {
        if self.given.is_empty() && self.names.is_empty() {
            return None;
        }
        let mut values = HashMap::new();
        for pid in &self.given {
            values.insert(*pid, read(*pid).ok()?);
        }
        for pid in named(&self.names).ok()? {
            if let Ok(value) = read(pid) {
                values.insert(pid, value);
            }
        }
        Some(values)
    }
}

/// The processes whose `comm` is one of `names`.
fn named(names: &[String]) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    if names.is_empty() {
        return Ok(out);
    }
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            && names.iter().any(|n| n == comm.trim())
        {
            out.push(pid);
        }
    }
    Ok(out)
}

fn rss_of(path: &str) -> Result<u64> {
    status_bytes(path, "VmRSS:")
}

fn rss_file_of(path: &str) -> Result<u64> {
    status_bytes(path, "RssFile:")
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_bytes(path: &str, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| path.to_owned())?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field) {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| field.to_owned())?;
            return Ok(kb * 1024);
        }
    }
    bail!("no {field} in {path}")
}

fn cpu_of(path: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| path.to_owned())?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, utime 14, stime 15 → indices 11 and 12 here.
    if fields.len() < 13 {
        bail!("short {path}");
    }
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks * 1_000_000 / clock_ticks())
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Our own CPU time (the load generator's), in microseconds.
pub fn self_cpu_us() -> u64 {
    cpu_of("/proc/self/stat").unwrap_or(0)
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// Number of CPUs this process may run on (its affinity mask).
pub fn cpus_allowed() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_since_counts_processes_started_meanwhile_and_drops_ended_ones() {
        let before = CpuSample([(1, 1_000), (2, 500)].into_iter().collect());
        // 1 went on, 2 ended, 3 started (a new database connection).
        let now = CpuSample([(1, 1_600), (3, 250)].into_iter().collect());
        assert_eq!(now.since(&before), 600 + 250);
    }

    #[test]
    fn named_processes_are_found_at_every_reading() {
        // As if none had that name at the start: this test's own process.
        let me = std::process::id();
        let comm = std::fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        let procs = Procs {
            pids: vec![],
            given: vec![],
            names: vec![comm.trim().to_owned()],
        };
        let sample = procs.cpu_sample().unwrap();
        assert!(sample.0.contains_key(&me));
        assert!(Procs::default().cpu_sample().is_none());
    }
}

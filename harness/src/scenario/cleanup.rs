//! What to tear down if the run is interrupted (Ctrl-C, SIGTERM): the network namespaces
//! and device processes the runner started. Normal exits clean up through `Drop`
//! (`TestBed`); this registry covers the case where `Drop` never runs.

use std::collections::BTreeSet;
use std::sync::Mutex;

#[derive(Default)]
struct Registry {
    netns: BTreeSet<String>,
    pids: BTreeSet<u32>,
    files: BTreeSet<std::path::PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    netns: BTreeSet::new(),
    pids: BTreeSet::new(),
    files: BTreeSet::new(),
});

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut g = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut g)
}

/// Remember a namespace, a device process and its socket file until [`Tracked`] is
/// dropped.
pub fn track(netns: Option<String>, pid: Option<u32>, file: Option<std::path::PathBuf>) -> Tracked {
    with(|r| {
        if let Some(f) = &file {
            r.files.insert(f.clone());
        }
        if let Some(n) = &netns {
            r.netns.insert(n.clone());
        }
        if let Some(p) = pid {
            r.pids.insert(p);
        }
    });
    Tracked { netns, pid, file }
}

/// Unregisters on drop (the owner cleaned up itself).
#[derive(Debug)]
pub struct Tracked {
    netns: Option<String>,
    pid: Option<u32>,
    file: Option<std::path::PathBuf>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        with(|r| {
            if let Some(n) = &self.netns {
                r.netns.remove(n);
            }
            if let Some(p) = self.pid {
                r.pids.remove(&p);
            }
            if let Some(f) = &self.file {
                r.files.remove(f);
            }
        });
    }
}

/// Kill every tracked device process and delete every tracked namespace. Returns what was
/// cleaned, for the message.
pub fn emergency_cleanup() -> (usize, usize) {
    let (pids, netns, files) = with(|r| {
        (
            std::mem::take(&mut r.pids),
            std::mem::take(&mut r.netns),
            std::mem::take(&mut r.files),
        )
    });
    for pid in &pids {
        if let Ok(pid) = i32::try_from(*pid) {
            // SAFETY: kill(2) with a pid we spawned ourselves; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    for n in &netns {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", n])
            .status();
    }
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    (pids.len(), netns.len())
}

/// Install the Ctrl-C / SIGTERM handler: clean up, say so, exit 130.
pub fn install_interrupt_handler() {
    let r = ctrlc::set_handler(|| {
        let (p, n) = emergency_cleanup();
        eprintln!(
            "\ninterrupted: killed {p} device process(es), deleted {n} network namespace(s); \
             exiting"
        );
        std::process::exit(130);
    });
    if let Err(e) = r {
        tracing::warn!(error = %e, "could not install the Ctrl-C handler");
    }
}

//! Private network namespaces (`ip netns add`), deleted on drop, with ways to run code inside.

use crate::{sys, Result, WireError};
use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`/run/netns/<name>`).
///
/// Made by [`NetNs::create`] it is private to this process run and deleted on drop (also when
/// the test panics, since drop runs during unwinding). [`NetNs::open`] attaches to an existing
/// one without deleting it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    file: File,
    owned: bool,
}

impl NetNs {
    /// Create a new namespace named `<prefix>-<pid>-<n>` (unique within and across processes)
    /// with its loopback interface up.
    pub fn create(prefix: &str) -> Result<NetNs> {
        check_name(prefix)?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        run_ip(&["netns", "add", &name])?;
        let ns = match File::open(format!("/run/netns/{name}")) {
            Ok(file) => NetNs {
                name,
                file,
                owned: true,
            },
            Err(e) => {
                let _ = run_ip(&["netns", "delete", &name]);
                return Err(WireError::io(format!("open /run/netns/{name}"), e));
            }
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Attach to an existing namespace by name; it is NOT deleted on drop.
    pub fn open(name: &str) -> Result<NetNs> {
        check_name(name)?;
        let file = File::open(format!("/run/netns/{name}"))
            .map_err(|e| WireError::io(format!("open /run/netns/{name}"), e))?;
        Ok(NetNs {
            name: name.to_string(),
            file,
            owned: false,
        })
    }

    /// The namespace's name (for `ip netns exec <name>` / `ip -n <name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run `f` on a fresh thread that has entered this namespace and wait for its result.
    /// A panic in `f` is resumed in the caller.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        thread::scope(|s| {
            let handle = s.spawn(|| -> Result<R> {
                sys::setns_net(self.file.as_fd())
                    .map_err(|e| WireError::io(format!("setns into {}", self.name), e))?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Spawn a named thread inside this namespace (a thread's network namespace is its own, so
    /// sockets it opens live in the namespace). Returns once the thread has entered it.
    pub fn spawn<F, R>(&self, thread_name: &str, f: F) -> Result<thread::JoinHandle<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let ns_file = self
            .file
            .try_clone()
            .map_err(|e| WireError::io("dup netns fd", e))?;
        let ns_name = self.name.clone();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
        let handle = thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                let entered = sys::setns_net(ns_file.as_fd())
                    .map_err(|e| WireError::io(format!("setns into {ns_name}"), e));
                drop(ns_file);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    // The caller gets the error; this thread must not run `f` outside the ns.
                    std::panic::resume_unwind(Box::new("setns failed"));
                }
                f()
            })
            .map_err(|e| WireError::io("spawn thread", e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(WireError::io(
                "spawn thread in netns",
                std::io::Error::other("thread exited before entering the namespace"),
            )),
        }
    }

    /// A command that runs `program` inside this namespace (`ip netns exec <name> program`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Run `ip -n <name> <args...>` and fail with its stderr if it fails.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// The namespace file (for `setns` by callers that manage their own threads).
    pub fn as_file(&self) -> &File {
        &self.file
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = run_ip(&["netns", "delete", &self.name]) {
                tracing::warn!(netns = %self.name, error = %e, "could not delete network namespace");
            }
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 200 {
        Some("longer than 200 bytes")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        Some("only ASCII letters, digits, '-', '_' and '.' are allowed")
    } else if name.starts_with('.') {
        Some("must not start with '.'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(WireError::InvalidName {
            what: "network namespace name",
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Run `ip <args>`; a failure carries the command line and stderr.
pub(crate) fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| WireError::io("run `ip` (is iproute2 installed?)", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(WireError::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

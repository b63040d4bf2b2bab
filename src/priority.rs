//! Background work yields the CPU to the data path.
//!
//! semtap's analysis threads (parsing, the semantic engine, the transformer tier, exporters,
//! the capture writer) run at a lower scheduling priority than the proxy's runtime, so on a
//! busy host the kernel gives the cores to forwarding first and analysis gets what is left;
//! when analysis falls behind, its bounded queues drop samples (counted), never requests.
//! BENCHMARKS.md ("The engine under load") measures the effect.

/// The nice value background threads take (Linux; 0 is normal, 19 the lowest priority).
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`BACKGROUND_NICE`]; true when it did. Linux
/// applies a nice value to one thread when given its thread id; elsewhere this does nothing.
/// Failing is harmless (the thread keeps its priority) and logged at debug level.
pub fn background_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE)
        };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not lower a background thread's priority"
            );
        }
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Puts the calling thread in the kernel's idle class (Linux `SCHED_IDLE`): it runs only on
/// CPU time no normal thread wants. For the semantic engine and the transformer tier, whose
/// work is a sample by design: at saturation they would otherwise take a share of the cores
/// from forwarding (nice 10 still gets ~10% of a core per busy thread and measurably cut the
/// proxy's saturated throughput, BENCHMARKS.md). Falls back to [`background_thread`] where the
/// class is refused or not available; true when the idle class was taken.
pub fn idle_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is the
        // calling thread.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc == 0 {
            return true;
        }
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not put a background thread in the idle class"
        );
    }
    background_thread();
    false
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn a_background_thread_runs_at_the_lower_priority_and_others_do_not() {
        let nice = || {
            // SAFETY: as above.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::getpriority(libc::PRIO_PROCESS, tid)
            }
        };
        let before = nice();
        let (applied, inside) = std::thread::spawn(move || (super::background_thread(), nice()))
            .join()
            .unwrap();
        // A sandbox may refuse setpriority; then the thread simply keeps its priority.
        if applied {
            assert!(inside >= super::BACKGROUND_NICE, "nice {inside}");
        }
        assert_eq!(nice(), before, "the calling thread is untouched");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_idle_thread_takes_the_idle_class_and_others_keep_theirs() {
        // SAFETY: sched_getscheduler takes a pid (0: the calling thread).
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let (applied, inside) = std::thread::spawn(move || (super::idle_thread(), policy()))
            .join()
            .unwrap();
        if applied {
            assert_eq!(inside, libc::SCHED_IDLE);
        }
        assert_eq!(policy(), before, "the calling thread is untouched");
    }
}

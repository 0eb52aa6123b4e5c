//! The conversation between the coordinator and one shard task: what the coordinator asks of a
//! running shard ([`Control`], one watch channel per shard) and how the task ended ([`ShardExit`]).

use tokio::sync::watch;

use crate::handoff::RELEASE_POLL_INTERVAL;

/// What the coordinator asks of one shard task (each running shard has its own channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Control {
    /// Keep reading.
    Run,
    /// Stop after a final checkpoint. With `emit_open_windows`, first write every open window as
    /// a not-final document; the windows stay open in the checkpoint, so a later run completes
    /// them and their final documents replace these.
    Stop {
        /// Write the open windows as not-final documents first (a run to idle).
        emit_open_windows: bool,
    },
    /// The assignment of `epoch` moved the shard away: flush, write a final checkpoint marked
    /// released at `epoch` (open windows stay in it) and exit.
    Release {
        /// The epoch of the assignment that moved the shard.
        epoch: u64,
    },
}

/// How a shard task ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ShardExit {
    /// Read to its end, with its finished checkpoint durable.
    Finished,
    /// Another owner wrote its checkpoint.
    Fenced,
    /// Stopped with a final checkpoint (shutdown, idle, or record budget).
    Stopped,
    /// Given up to its new owner (or never claimed: released while waiting).
    Released,
}

/// Asks a shard to stop, unless it is already being released (a release writes a final
/// checkpoint too, and tells the new owner it may claim the shard at once). Asking again for the
/// same stop wakes nobody.
pub(super) fn request_stop(control: &watch::Sender<Control>, stop: Control) {
    control.send_if_modified(|current| match current {
        Control::Release { .. } => false,
        _ if *current == stop => false,
        _ => {
            *current = stop;
            true
        }
    });
}

/// Sleeps [`RELEASE_POLL_INTERVAL`], or less when the coordinator sends a new request (read at the
/// top of the claim loop).
pub(super) async fn wait_or_interrupt(control: &mut watch::Receiver<Control>) {
    tokio::select! {
        () = tokio::time::sleep(RELEASE_POLL_INTERVAL) => {}
        Ok(()) = control.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    const IDLE_STOP: Control = Control::Stop { emit_open_windows: true };
    const SHUTDOWN: Control = Control::Stop { emit_open_windows: false };

    #[test]
    fn a_stop_replaces_run_and_an_earlier_stop_but_never_a_release() {
        let (tx, mut rx) = watch::channel(Control::Run);
        request_stop(&tx, IDLE_STOP);
        assert!(rx.has_changed().expect("open"), "the task is woken");
        assert_eq!(*rx.borrow_and_update(), IDLE_STOP);

        request_stop(&tx, IDLE_STOP);
        assert!(!rx.has_changed().expect("open"), "the same stop again wakes nobody");

        request_stop(&tx, SHUTDOWN);
        assert_eq!(*rx.borrow_and_update(), SHUTDOWN, "a different stop replaces the first");

        tx.send_replace(Control::Release { epoch: 7 });
        rx.borrow_and_update();
        request_stop(&tx, SHUTDOWN);
        assert!(!rx.has_changed().expect("open"));
        assert_eq!(*rx.borrow(), Control::Release { epoch: 7 }, "the release (and its final checkpoint) goes on");
    }

    #[tokio::test]
    async fn a_waiting_claim_wakes_early_on_a_new_request() {
        let (tx, mut rx) = watch::channel(Control::Run);
        let started = Instant::now();
        let waiter = tokio::spawn(async move {
            wait_or_interrupt(&mut rx).await;
            rx
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        request_stop(&tx, SHUTDOWN);
        let rx = waiter.await.expect("waiter");
        assert!(started.elapsed() < RELEASE_POLL_INTERVAL, "woken by the stop, not the poll interval");
        assert_eq!(*rx.borrow(), SHUTDOWN);

        let (_tx, mut quiet) = watch::channel(Control::Run);
        let started = Instant::now();
        wait_or_interrupt(&mut quiet).await;
        assert!(started.elapsed() >= RELEASE_POLL_INTERVAL, "without a request it waits the full interval");
    }
}

//! Running work only while leading: the controller is started when the Lease is won and dropped
//! as soon as it is lost.

use std::future::Future;

use tokio::sync::watch;

/// Runs `work` only while `leading` is `true`: waits for leadership, starts `work()`, and drops that
/// future (cancelling it at its next `.await`) as soon as leadership is lost, starting a fresh one
/// when it is won again. Returns when `work` finishes by itself or when the elector has stopped
/// (its sender dropped) while not leading.
///
/// With the controller as `work`, a replica that loses the Lease stops reconciling before any other
/// replica can take the Lease over (see the `leader` module documentation).
pub async fn run_while_leading<F, Fut>(mut leading: watch::Receiver<bool>, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        tokio::select! {
            () = work() => return,
            lost = leading.wait_for(|l| !*l) => if lost.is_err() { return },
        }
        tracing::info!("leadership lost: reconciling stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn work_runs_only_while_leading() {
        let (leading_tx, leading_rx) = watch::channel(false);
        let started = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        struct Guard(Arc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let runner = tokio::spawn({
            let (started, dropped) = (started.clone(), dropped.clone());
            run_while_leading(leading_rx, move || {
                let guard = Guard(dropped.clone());
                started.fetch_add(1, Ordering::SeqCst);
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                }
            })
        });
        let settle = || tokio::time::sleep(Duration::from_millis(20));
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 0, "started without leadership");
        leading_tx.send(true).expect("runner listens");
        settle().await;
        assert_eq!((started.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst)), (1, 0));
        leading_tx.send(false).expect("runner listens");
        settle().await;
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "work not stopped on losing leadership");
        leading_tx.send(true).expect("runner listens");
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 2, "work not restarted on regaining leadership");
        leading_tx.send(false).expect("runner listens");
        drop(leading_tx);
        runner.await.expect("runner ends with the elector");
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
    }
}

//! Freeing large buffers off the critical path.
//!
//! Returning hundreds of megabytes to the kernel (`munmap`, page by page) takes
//! tens of milliseconds on one thread. Where a stage ends by dropping such
//! buffers (k-means' training sample and its bounds), the next stage's threads
//! would wait for that; [`drop_behind`] lets a short-lived thread of its own do
//! it while they start.

/// Drops `value` on a detached thread (right here if none can be started). Only
/// for plain memory: nothing may wait for the drop to have happened.
pub(crate) fn drop_behind<T: Send + 'static>(value: T) {
    // `spawn` drops the closure, and `value` with it, when it cannot start a thread.
    let _ = std::thread::Builder::new()
        .name("dprune-free".into())
        .spawn(move || drop(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_dropped() {
        let (tx, rx) = std::sync::mpsc::channel();
        struct Tell(std::sync::mpsc::Sender<()>);
        impl Drop for Tell {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        drop_behind(Tell(tx));
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("dropped");
    }
}

//! Blocking work of a stage (pixels, models, disk) off the async workers, with the stage's state
//! moved onto the blocking pool and back: no lock, no clone of the state.

/// Runs `work` on `state` on the blocking pool and gives the state back with the result; Err when
/// the blocking task panicked (the state went with it, and the stage must stop).
pub async fn off_the_workers<S, T>(
    mut state: S,
    work: impl FnOnce(&mut S) -> T + Send + 'static,
) -> Result<(S, T), tokio::task::JoinError>
where
    S: Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let outcome = work(&mut state);
        (state, outcome)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_state_comes_back_with_the_result_and_a_panic_is_an_error() {
        let (state, doubled) = off_the_workers(vec![1, 2], |v| v.iter().map(|x| x * 2).sum::<i32>()).await.unwrap();
        assert_eq!((state, doubled), (vec![1, 2], 6));
        let failed = off_the_workers(0u8, |_| -> u8 { panic!("a broken model") }).await;
        assert!(failed.is_err());
    }
}

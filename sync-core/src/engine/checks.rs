//! Live queries' change checks, gathered: the watches that one change wakes ask the
//! store in one call ([`LocalStore::matching_each`]) instead of one lookup each.
//!
//! Each watch still asks for itself and gets its own answer, so gathering changes only
//! how many trips reach the store, never a result: the first ask of a round starts a
//! task that lets the other woken watches queue theirs (a few scheduler turns, no
//! timer), then takes every ask waiting and answers them all. The task is spawned, not
//! run by the first asker, so a watch dropped while waiting strands no one.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::error::Error;
use crate::ids::RecordId;
use crate::store::{LocalStore, Query};

/// Scheduler turns a round waits for other watches' asks before it runs.
const GATHER_TURNS: usize = 3;

/// One watch's ask.
struct Ask {
    query: Query,
    ids: Vec<RecordId>,
    reply: oneshot::Sender<Result<Vec<RecordId>, Error>>,
}

/// The asks waiting for the next round.
#[derive(Default)]
pub(crate) struct Checks {
    waiting: Mutex<Vec<Ask>>,
}

impl std::fmt::Debug for Checks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("Checks").field("waiting", &waiting).finish()
    }
}

impl Checks {
    /// [`LocalStore::matching`] for `query` and `ids`, answered in a round with the other
    /// watches' asks of the moment.
    pub(crate) async fn matching(
        self: &Arc<Self>,
        store: &Arc<dyn LocalStore>,
        query: Query,
        ids: Vec<RecordId>,
    ) -> Result<Vec<RecordId>, Error> {
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            waiting.push(Ask { query, ids, reply });
            waiting.len() == 1
        };
        if first {
            tokio::spawn(round(self.clone(), store.clone()));
        }
        answer.await.unwrap_or(Err(Error::Shutdown))
    }
}

/// Gathers the asks of the moment and answers them with one store call.
async fn round(checks: Arc<Checks>, store: Arc<dyn LocalStore>) {
    for _ in 0..GATHER_TURNS {
        tokio::task::yield_now().await;
    }
    let asks = std::mem::take(&mut *checks.waiting.lock().unwrap_or_else(PoisonError::into_inner));
    let (questions, replies): (Vec<_>, Vec<_>) = asks.into_iter().map(|a| ((a.query, a.ids), a.reply)).unzip();
    match store.matching_each(&questions).await {
        Ok(answers) if answers.len() == replies.len() => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(answers) => {
            let error = Error::Storage {
                kind: crate::error::StorageErrorKind::Corrupt,
                message: format!("matching_each answered {} of {} asks", answers.len(), replies.len()),
            };
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

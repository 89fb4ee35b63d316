//! Tokens from the app: the [`TokenProvider`] trait, and the rule for how often the
//! engine may ask it.

use std::panic::AssertUnwindSafe;

use async_trait::async_trait;
use futures::FutureExt;

use crate::error::Error;
use crate::ids::AccountId;
use crate::transport::Credentials;

/// How many times in a row the engine asks the provider for a token before it gives up
/// and waits for the app (status `auth_required`).
pub const TOKEN_ATTEMPTS: u32 = 3;

/// Where the engine gets tokens: the app's sign-in (an OAuth refresh token, the
/// platform's keychain, an identity SDK). Give it to
/// [`crate::EngineBuilder::token_provider`].
///
/// The engine asks for a token when it has none, and for a new one when the server
/// answers 401. One cycle runs at a time, so a burst of requests refused together costs
/// one refresh. A refused or failed refresh is tried at most [`TOKEN_ATTEMPTS`] times
/// (with backoff, and only while the provider's errors are retryable); then pushes and
/// pulls pause, nothing queued is dropped, and the engine waits for
/// [`crate::Engine::set_credentials`]. A provider that returns an unusable token or
/// panics is [`Error::TokenProvider`].
#[async_trait]
pub trait TokenProvider: Send + Sync + 'static {
    /// A token for `account`, when the engine has none (at start).
    ///
    /// # Errors
    /// Retryable errors ([`Error::Unreachable`], [`Error::Transient`]) are tried again
    /// with backoff; any other error pauses syncing until the app steps in.
    async fn token(&self, account: &AccountId) -> Result<String, Error>;

    /// A new token for `account` after the server refused `refused` (401).
    ///
    /// # Errors
    /// As [`TokenProvider::token`].
    async fn refresh(&self, account: &AccountId, refused: &str) -> Result<String, Error>;
}

/// What the engine does after the provider's answer number `attempt` (1 for the first)
/// failed with `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Wait the backoff delay for `attempt`, then ask again.
    AskAgain,
    /// Stop asking: the status becomes `auth_required`.
    GiveUp,
}

/// The rule: ask again only for a retryable error, and at most [`TOKEN_ATTEMPTS`] times.
pub(crate) fn after_failure(attempt: u32, error: &Error) -> AfterFailure {
    if error.is_retryable() && attempt < TOKEN_ATTEMPTS { AfterFailure::AskAgain } else { AfterFailure::GiveUp }
}

/// Asks the provider once (`refused` None: a first token; Some: a refresh) and checks
/// the answer. A panic in the provider becomes [`Error::TokenProvider`].
pub(crate) async fn ask(
    provider: &dyn TokenProvider,
    account: &AccountId,
    refused: Option<&str>,
) -> Result<Credentials, Error> {
    let asked = match refused {
        None => provider.token(account),
        Some(refused) => provider.refresh(account, refused),
    };
    let token = AssertUnwindSafe(asked)
        .catch_unwind()
        .await
        .map_err(|_| Error::TokenProvider { message: "the token provider panicked".into() })??;
    Credentials::new(account.clone(), token).map_err(|e| Error::TokenProvider { message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_retryable_failures_are_asked_again_and_only_a_few_times() {
        let transient = Error::Transient { message: "503".into() };
        let unreachable = Error::Unreachable { message: "offline".into() };
        let refused = Error::Unauthorized { message: "refresh token revoked".into() };
        let broken = Error::TokenProvider { message: "empty".into() };
        for (attempt, error, expected) in [
            (1, &transient, AfterFailure::AskAgain),
            (2, &unreachable, AfterFailure::AskAgain),
            (TOKEN_ATTEMPTS, &transient, AfterFailure::GiveUp),
            (TOKEN_ATTEMPTS + 5, &transient, AfterFailure::GiveUp),
            (1, &refused, AfterFailure::GiveUp),
            (1, &broken, AfterFailure::GiveUp),
        ] {
            assert_eq!(after_failure(attempt, error), expected, "attempt {attempt}: {error}");
        }
    }

    struct Odd(&'static str);

    #[async_trait]
    impl TokenProvider for Odd {
        async fn token(&self, _: &AccountId) -> Result<String, Error> {
            match self.0 {
                "panic" => panic!("the provider's own bug"),
                token => Ok(token.to_owned()),
            }
        }
        async fn refresh(&self, account: &AccountId, _: &str) -> Result<String, Error> {
            self.token(account).await
        }
    }

    #[tokio::test]
    async fn unusable_answers_are_typed_errors() {
        let alice = AccountId::new("alice").expect("valid");
        for odd in ["", "has space", "panic"] {
            let asked = ask(&Odd(odd), &alice, None).await;
            assert!(matches!(asked, Err(Error::TokenProvider { .. })), "{odd:?}: {asked:?}");
            let asked = ask(&Odd(odd), &alice, Some("old")).await;
            assert!(matches!(asked, Err(Error::TokenProvider { .. })), "{odd:?}: {asked:?}");
        }
        let fine = ask(&Odd("fresh"), &alice, Some("old")).await.expect("a usable token");
        assert_eq!((fine.account(), fine.token()), (&alice, "fresh"));
    }
}

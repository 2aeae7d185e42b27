//! How a function's return value divides into what is cached and what is merely returned.
//!
//! The macro picks one shape per function from its return type: `Result<T, E>` caches `T` only
//! from `Ok`; `Option<T>` caches `T` only from `Some` (unless `cache_none`, which caches the whole
//! `Option` with [`Whole`]); any other type is cached whole.

use std::any::Any;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value a cache may hold: it is cloned out on every hit and shared between tasks.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be cached",
    label = "a cached value must be `Clone + Send + Sync + 'static`",
    note = "wrap shared state in `Arc`, and return owned data rather than references"
)]
pub trait CacheValue: Clone + Send + Sync + 'static {}

impl<T: Clone + Send + Sync + 'static> CacheValue for T {}

/// A value that may be stored in Redis: the value of a `redis` or `tiered` site, or of a site
/// without `backend = ...`, which follows the backend the application configures as its default
/// (`tiered` in production, say).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in Redis",
    label = "a `redis` or `tiered` site stores its value in Redis, and so may a site without `backend` (it follows the configured default)",
    note = "derive `serde::Serialize` and `serde::Deserialize` for it, or keep the site in this process with `backend = \"memory\"`"
)]
pub trait PortableValue: CacheValue + Serialize + DeserializeOwned {}

impl<T: CacheValue + Serialize + DeserializeOwned> PortableValue for T {}

/// A cached value with its type erased, as backends hold it in memory.
pub type AnyValue = Arc<dyn Any + Send + Sync>;

/// A value with its type erased that can say whether it is a `V`: a flight's `dyn Any`, or the
/// memory store's entry, which answers without a virtual call.
pub(crate) trait Downcast {
    /// The value, if it is a `V`.
    fn downcast_ref<V: Any>(&self) -> Option<&V>;
    /// The value, as `dyn Any`.
    fn as_any(&self) -> &(dyn Any + Send + Sync);
}

impl Downcast for dyn Any + Send + Sync {
    #[inline]
    fn downcast_ref<V: Any>(&self) -> Option<&V> {
        <dyn Any + Send + Sync>::downcast_ref(self)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
}

/// What one call's return value means for the cache.
pub enum Produced<'a, V> {
    /// A value to store and share with the callers waiting on this key.
    Value(&'a V),
    /// Nothing to store, but waiting callers can be answered without running the body (`None`).
    Absent,
    /// Nothing to store or share (`Err`): every waiting caller runs the body itself.
    Failed,
}

/// How a return type `R` holds the part a cache keeps, whatever that part's type.
///
/// The shapes implement this without bounds, and each entry point that expansions call states
/// `Part: CacheValue` itself. That bound is then what fails for a value that cannot be cached,
/// and rustc reports it with [`CacheValue`]'s message; a bound inside the shapes' impls would be
/// reported as a missing `Clone`, against the shape.
pub trait Holds<R>: Copy + Default + Send + Sync + 'static {
    /// The cached part of `R`.
    type Part;
    /// Classifies a fresh return value.
    fn produced(self, ret: &R) -> Produced<'_, Self::Part>;
    /// Rebuilds the return value from a cached part.
    fn rebuild(self, part: Self::Part) -> R;
    /// The return value for [`Produced::Absent`].
    fn absent(self) -> Option<R>;
}

/// A [`Holds`] whose part can be cached: what the call paths work with.
pub trait ReturnShape<R>: Copy + Send + Sync + 'static {
    /// The cached part of `R`.
    type Value: CacheValue;
    /// Classifies a fresh return value.
    fn produced(self, ret: &R) -> Produced<'_, Self::Value>;
    /// Rebuilds the return value from a cached value.
    fn rebuild(self, value: Self::Value) -> R;
    /// The return value for [`Produced::Absent`].
    fn absent(self) -> Option<R>;
}

impl<R, S> ReturnShape<R> for S
where
    S: Holds<R>,
    S::Part: CacheValue,
{
    type Value = S::Part;

    fn produced(self, ret: &R) -> Produced<'_, S::Part> {
        Holds::produced(self, ret)
    }

    fn rebuild(self, value: S::Part) -> R {
        Holds::rebuild(self, value)
    }

    fn absent(self) -> Option<R> {
        Holds::absent(self)
    }
}

/// Shape of `Result<T, E>`: only `Ok(T)` is cached.
#[derive(Clone, Copy, Debug, Default)]
pub struct OkOnly;

impl<T, E> Holds<Result<T, E>> for OkOnly {
    type Part = T;

    fn produced(self, ret: &Result<T, E>) -> Produced<'_, T> {
        match ret {
            Ok(value) => Produced::Value(value),
            Err(_) => Produced::Failed,
        }
    }

    fn rebuild(self, value: T) -> Result<T, E> {
        Ok(value)
    }

    fn absent(self) -> Option<Result<T, E>> {
        None
    }
}

/// Shape of `Option<T>`: only `Some(T)` is cached.
#[derive(Clone, Copy, Debug, Default)]
pub struct SomeOnly;

impl<T> Holds<Option<T>> for SomeOnly {
    type Part = T;

    fn produced(self, ret: &Option<T>) -> Produced<'_, T> {
        match ret {
            Some(value) => Produced::Value(value),
            None => Produced::Absent,
        }
    }

    fn rebuild(self, value: T) -> Option<T> {
        Some(value)
    }

    fn absent(self) -> Option<Option<T>> {
        Some(None)
    }
}

/// Shape of any other type (and of `Option` with `cache_none`): the whole value is cached.
#[derive(Clone, Copy, Debug, Default)]
pub struct Whole;

impl<R> Holds<R> for Whole {
    type Part = R;

    fn produced(self, ret: &R) -> Produced<'_, R> {
        Produced::Value(ret)
    }

    fn rebuild(self, value: R) -> R {
        value
    }

    fn absent(self) -> Option<R> {
        None
    }
}

/// Tells whether a mutating function's return value means success (and so invalidates).
pub trait Success<R>: Copy {
    /// `true` when the call succeeded.
    fn succeeded(self, ret: &R) -> bool;
}

/// Success is `Ok`.
#[derive(Clone, Copy, Debug)]
pub struct IfOk;

impl<T, E> Success<Result<T, E>> for IfOk {
    fn succeeded(self, ret: &Result<T, E>) -> bool {
        ret.is_ok()
    }
}

/// Every return is a success.
#[derive(Clone, Copy, Debug)]
pub struct Always;

impl<R> Success<R> for Always {
    fn succeeded(self, _: &R) -> bool {
        true
    }
}

//! A value as the memory store holds it, its type erased in two words: the value itself when it
//! fits in one (an `Arc`, a `Box`, an integer), otherwise a thin pointer to an `Arc` of it; and
//! a static table of what its type needs (its `TypeId`, a view as `dyn Any`, its drop).
//!
//! A hit asks for its type by [`Stored::downcast_ref`], which compares the table's `TypeId`
//! and reads the word, where `dyn Any` would take two virtual calls (the view, then its
//! `type_id`): a third of the memory hit's own instructions, outside the store's probe.
//!
//! Why not `Arc<dyn Any>` (`AnyValue`), which the store held before: a hit then read the slot,
//! then the `Arc`'s allocation (the holder) for the value inside it, then, for a value that is
//! itself an `Arc` (the common case for anything large), that value's allocation: three cache
//! lines a hit on a key not read recently. Held inline, an `Arc<T>` is read from the slot and
//! its clone touches only `T`'s allocation, which returning it has to write anyway.

use std::any::{Any, TypeId};
use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::mem::{self, MaybeUninit};
use std::sync::Arc;

use crate::shape::{AnyValue, Downcast};

/// A cached value, type-erased. Built typed ([`Stored::of`]) by the fills that know the type,
/// or from an [`AnyValue`] by those that do not (one more indirection on every hit).
pub(crate) struct Stored {
    /// The value's bytes (inline), or a pointer (boxed, erased): see `kind`. In a cell: an
    /// inline `V` may have interior mutability (an atomic its `Clone` counts in, say), which a
    /// `&V` made from a plain field's shared borrow would forbid (undefined behaviour, caught
    /// by Miri; and `&Stored` would be `readonly` to LLVM).
    word: UnsafeCell<MaybeUninit<usize>>,
    kind: &'static Kind,
}

/// What a [`Stored`] of one type and representation needs; one static per (type, way).
struct Kind {
    /// The value's type, for `Inline` and `Boxed`; an erased value's type is only known to
    /// its `dyn Any`.
    type_id: TypeId,
    /// The value, as `dyn Any`, given the address of the `word` it lives in or points from.
    as_any: unsafe fn(*const MaybeUninit<usize>) -> *const (dyn Any + Send + Sync),
    /// Drops what `word` holds.
    drop: unsafe fn(*mut MaybeUninit<usize>),
    /// How `word` holds the value (`Kind`s are promoted constants, which the compiler may
    /// duplicate, so their addresses cannot tell).
    way: Way,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Inline,
    Boxed,
    Erased,
}

// SAFETY: a `Stored` owns a `V: Send + Sync` (inline, or through an `Arc<V>` or a boxed
// `AnyValue`, both `Send + Sync` for such a `V`), and offers only shared access to it.
unsafe impl Send for Stored {}
unsafe impl Sync for Stored {}

/// Whether a `V` fits in the word itself.
const fn fits<V>() -> bool {
    mem::size_of::<V>() <= mem::size_of::<usize>()
        && mem::align_of::<V>() <= mem::align_of::<usize>()
}

struct Inline<V>(PhantomData<V>);

impl<V: Any + Send + Sync> Inline<V> {
    const KIND: &'static Kind = &Kind {
        type_id: TypeId::of::<V>(),
        as_any: Self::as_any,
        drop: Self::drop,
        way: Way::Inline,
    };

    /// SAFETY: `word` holds a `V` (written by `Stored::of`).
    unsafe fn as_any(word: *const MaybeUninit<usize>) -> *const (dyn Any + Send + Sync) {
        word.cast::<V>() as *const (dyn Any + Send + Sync)
    }

    /// SAFETY: `word` holds a `V` not yet dropped.
    unsafe fn drop(word: *mut MaybeUninit<usize>) {
        unsafe { word.cast::<V>().drop_in_place() }
    }
}

struct Boxed<V>(PhantomData<V>);

impl<V: Any + Send + Sync> Boxed<V> {
    const KIND: &'static Kind = &Kind {
        type_id: TypeId::of::<V>(),
        as_any: Self::as_any,
        drop: Self::drop,
        way: Way::Boxed,
    };

    /// SAFETY: `word` holds `Arc::into_raw` of an `Arc<V>`.
    unsafe fn as_any(word: *const MaybeUninit<usize>) -> *const (dyn Any + Send + Sync) {
        unsafe { word.cast::<*const V>().read() as *const (dyn Any + Send + Sync) }
    }

    /// SAFETY: `word` holds `Arc::into_raw` of an `Arc<V>` whose count this `Stored` owns.
    unsafe fn drop(word: *mut MaybeUninit<usize>) {
        unsafe { drop(Arc::from_raw(word.cast::<*const V>().read())) }
    }
}

/// An [`AnyValue`] whose type the filler did not name: a thin pointer to a box holding it.
const ERASED: &Kind = &Kind {
    type_id: TypeId::of::<Erased>(),
    as_any: erased_as_any,
    drop: erased_drop,
    way: Way::Erased,
};

/// The `type_id` of an erased value's kind: a type no value has.
enum Erased {}

/// SAFETY: `word` holds `Box::into_raw` of a `Box<AnyValue>`.
unsafe fn erased_as_any(word: *const MaybeUninit<usize>) -> *const (dyn Any + Send + Sync) {
    unsafe {
        let holder = &*word.cast::<*const AnyValue>().read();
        Arc::as_ptr(holder)
    }
}

/// SAFETY: `word` holds `Box::into_raw` of a `Box<AnyValue>` this `Stored` owns.
unsafe fn erased_drop(word: *mut MaybeUninit<usize>) {
    unsafe { drop(Box::from_raw(word.cast::<*mut AnyValue>().read())) }
}

impl Stored {
    /// `value` as the store holds it: a clone of it inline if it fits in a word, else this very
    /// `Arc` (shared with the flight that hands it to the waiting callers).
    pub(crate) fn of<V: Any + Clone + Send + Sync>(value: &Arc<V>) -> Stored {
        let mut word = MaybeUninit::<usize>::uninit();
        if fits::<V>() {
            // SAFETY: `V` fits in the word's size and alignment (`fits`).
            unsafe { word.as_mut_ptr().cast::<V>().write(V::clone(value)) };
            Stored {
                word: UnsafeCell::new(word),
                kind: Inline::<V>::KIND,
            }
        } else {
            Stored::shared(Arc::clone(value))
        }
    }

    /// This very `Arc`, shared with the flight (never inline: for a value too large for a
    /// word, or one that is not `Clone`).
    pub(crate) fn shared<V: Any + Send + Sync>(value: Arc<V>) -> Stored {
        let mut word = MaybeUninit::<usize>::uninit();
        // SAFETY: a thin pointer fills the word exactly.
        unsafe {
            word.as_mut_ptr()
                .cast::<*const V>()
                .write(Arc::into_raw(value))
        };
        Stored {
            word: UnsafeCell::new(word),
            kind: Boxed::<V>::KIND,
        }
    }
}

impl Downcast for Stored {
    #[inline(always)]
    fn downcast_ref<V: Any>(&self) -> Option<&V> {
        let kind = self.kind;
        let typed = kind.type_id == TypeId::of::<V>();
        // SAFETY: a typed kind was built for a `V` with `word` (`of`, `shared`): the `V`
        // itself, or the pointer of an `Arc<V>` this `Stored` holds a count of. The reference
        // lives no longer than `self`, which owns the value.
        match kind.way {
            Way::Inline if typed => Some(unsafe { &*self.word.get().cast::<V>() }),
            Way::Boxed if typed => Some(unsafe { &*self.word.get().cast::<*const V>().read() }),
            Way::Erased => self.as_any().downcast_ref(),
            Way::Inline | Way::Boxed => None,
        }
    }

    #[inline]
    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        // SAFETY: `kind` was chosen with `word` in the constructor, and the reference lives
        // no longer than `self`, which owns the value.
        unsafe { &*(self.kind.as_any)(self.word.get()) }
    }
}

impl From<AnyValue> for Stored {
    fn from(value: AnyValue) -> Stored {
        let mut word = MaybeUninit::<usize>::uninit();
        // SAFETY: a thin pointer fills the word exactly.
        unsafe {
            word.as_mut_ptr()
                .cast::<*mut AnyValue>()
                .write(Box::into_raw(Box::new(value)))
        };
        Stored {
            word: UnsafeCell::new(word),
            kind: ERASED,
        }
    }
}

impl Drop for Stored {
    fn drop(&mut self) {
        // SAFETY: `kind` matches `word`, and this is the one drop of the value.
        unsafe { (self.kind.drop)(self.word.get_mut()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn an_arc_is_held_inline_and_shares_the_value() {
        // A fill of an `Arc<String>` value, which the flight shares as `Arc<Arc<String>>`.
        let value = Arc::new(String::from("row"));
        let filled = Arc::new(Arc::clone(&value));
        let stored = Stored::of(&filled);
        drop(filled);
        assert_eq!(stored.kind.way, Way::Inline);
        let held = stored
            .as_any()
            .downcast_ref::<Arc<String>>()
            .expect("the type");
        assert!(Arc::ptr_eq(held, &value), "the same allocation, no holder");
        assert_eq!(Arc::strong_count(&value), 2);
        drop(stored);
        assert_eq!(Arc::strong_count(&value), 1);
    }

    #[test]
    fn a_large_value_shares_the_fills_arc() {
        let value = Arc::new([7u64; 4]);
        let stored = Stored::of(&value);
        assert_eq!(stored.kind.way, Way::Boxed);
        let held = stored
            .as_any()
            .downcast_ref::<[u64; 4]>()
            .expect("the type");
        assert!(std::ptr::eq(held, &*value));
        assert_eq!(Arc::strong_count(&value), 2);
        drop(stored);
        assert_eq!(Arc::strong_count(&value), 1);
    }

    #[test]
    fn an_erased_value_downcasts_to_its_type_only() {
        let value: AnyValue = Arc::new(5u32);
        let stored = Stored::from(Arc::clone(&value));
        assert_eq!(stored.kind.way, Way::Erased);
        assert_eq!(stored.as_any().downcast_ref::<u32>(), Some(&5));
        assert!(stored.as_any().downcast_ref::<u64>().is_none());
        assert_eq!(Arc::strong_count(&value), 2);
        drop(stored);
        assert_eq!(Arc::strong_count(&value), 1);
    }

    #[test]
    fn the_typed_read_agrees_with_dyn_any_for_every_way() {
        let inline = Stored::of(&Arc::new(7u64));
        let boxed = Stored::of(&Arc::new([7u64; 4]));
        let shared = Stored::shared(Arc::new(String::from("row")));
        let erased = Stored::from(Arc::new(7u64) as AnyValue);
        for stored in [&inline, &boxed, &shared, &erased] {
            let any = stored.as_any();
            assert_eq!(stored.downcast_ref::<u64>(), any.downcast_ref::<u64>());
            assert_eq!(stored.downcast_ref::<i64>(), None);
            assert_eq!(
                stored.downcast_ref::<[u64; 4]>(),
                any.downcast_ref::<[u64; 4]>()
            );
            assert_eq!(
                stored.downcast_ref::<String>(),
                any.downcast_ref::<String>()
            );
            // The representation is never mistaken for the value.
            assert_eq!(stored.downcast_ref::<Arc<[u64; 4]>>(), None);
            assert_eq!(stored.downcast_ref::<Arc<String>>(), None);
            assert_eq!(stored.downcast_ref::<AnyValue>().map(|_| ()), None);
        }
        assert_eq!(inline.downcast_ref::<u64>(), Some(&7));
        assert_eq!(erased.downcast_ref::<u64>(), Some(&7));
        assert_eq!(boxed.downcast_ref::<[u64; 4]>(), Some(&[7; 4]));
        assert_eq!(
            shared.downcast_ref::<String>().map(String::as_str),
            Some("row")
        );
    }

    #[test]
    fn a_small_value_is_inline_and_dropped_once() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        #[derive(Clone)]
        struct Counted(#[allow(dead_code)] u32);
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }
        let value = Arc::new(Counted(3));
        let stored = Stored::of(&value);
        assert_eq!(stored.kind.way, Way::Inline);
        assert!(stored.as_any().downcast_ref::<Counted>().is_some());
        assert!(stored.as_any().downcast_ref::<u32>().is_none());
        drop(stored);
        assert_eq!(DROPS.load(Ordering::SeqCst), 1, "the inline clone, once");
        drop(value);
        assert_eq!(DROPS.load(Ordering::SeqCst), 2);
    }

    // Review 21: the typed read (`downcast_ref`) against type confusion, layouts at the
    // word's edges, and drops; run under Miri too (`cargo +nightly miri test ... stored`).

    /// Every way `value` can be stored: inline or boxed by `of`, boxed by `shared`, erased.
    fn every_way<V: Any + Clone + Send + Sync>(value: &V) -> [Stored; 3] {
        [
            Stored::of(&Arc::new(value.clone())),
            Stored::shared(Arc::new(value.clone())),
            Stored::from(Arc::new(value.clone()) as AnyValue),
        ]
    }

    #[test]
    fn layouts_at_the_words_edges_read_back_as_themselves_only() {
        #[derive(Clone, Debug, PartialEq)]
        struct Zst;
        #[derive(Clone, Debug, PartialEq)]
        #[repr(align(16))]
        struct Aligned16(u8);
        #[derive(Clone, Debug, PartialEq)]
        #[repr(align(16))]
        struct AlignedZst;
        #[derive(Clone, Debug, PartialEq)]
        struct Newtype(u64);

        fn check<V: Any + Clone + Send + Sync + PartialEq + std::fmt::Debug>(value: V, way: Way) {
            let [of, shared, erased] = every_way(&value);
            assert_eq!(of.kind.way, way, "{}", std::any::type_name::<V>());
            assert_eq!(shared.kind.way, Way::Boxed);
            assert_eq!(erased.kind.way, Way::Erased);
            for stored in [&of, &shared, &erased] {
                let read = stored.downcast_ref::<V>().expect("its own type");
                assert_eq!(read, &value);
                // Aligned for `V`, wherever the `Stored` lives.
                assert_eq!((read as *const V as usize) % mem::align_of::<V>(), 0);
                assert!(stored.downcast_ref::<Arc<V>>().is_none());
                assert!(stored.downcast_ref::<Option<V>>().is_none());
                if TypeId::of::<V>() != TypeId::of::<Newtype>() {
                    assert!(stored.downcast_ref::<Newtype>().is_none());
                }
            }
            // Moved (the word is copied): still the value.
            let moved = vec![of, shared, erased];
            for stored in &moved {
                assert_eq!(stored.downcast_ref::<V>(), Some(&value));
            }
        }
        check((), Way::Inline);
        check(Zst, Way::Inline);
        check(AlignedZst, Way::Boxed);
        check(Aligned16(9), Way::Boxed);
        check(u128::MAX - 3, Way::Boxed);
        check([1u8, 2, 3, 4, 5, 6, 7, 8], Way::Inline);
        check([1u8, 2, 3], Way::Inline);
        check(true, Way::Inline);
        check(Newtype(u64::MAX), Way::Inline);
        check(Some(Arc::new(String::from("row"))), Way::Inline);
        check(None::<Arc<String>>, Way::Inline);
        check(Some(Box::new(7u32)), Way::Inline);
        check("text", Way::Boxed);
        check((1u32, 2u16), Way::Inline);
        check((1u64, 2u8), Way::Boxed);
        check(String::from("boxed"), Way::Boxed);
    }

    #[test]
    fn same_bits_other_types_are_misses() {
        #[derive(Clone)]
        struct Wrapped<V>(#[allow(dead_code)] V);
        for stored in every_way(&7u64) {
            assert_eq!(stored.downcast_ref::<u64>(), Some(&7));
            assert!(stored.downcast_ref::<i64>().is_none());
            assert!(stored.downcast_ref::<f64>().is_none());
            assert!(stored.downcast_ref::<usize>().is_none());
            assert!(stored.downcast_ref::<Wrapped<u64>>().is_none());
            assert!(stored.downcast_ref::<Arc<u64>>().is_none());
            assert!(stored.downcast_ref::<Box<u64>>().is_none());
            assert!(stored.downcast_ref::<AnyValue>().is_none());
            assert!(stored.downcast_ref::<Stored>().is_none());
        }
        for stored in every_way(&Wrapped(7u32)) {
            assert!(stored.downcast_ref::<Wrapped<u32>>().is_some());
            assert!(stored.downcast_ref::<Wrapped<u64>>().is_none());
            assert!(stored.downcast_ref::<Wrapped<i32>>().is_none());
            assert!(stored.downcast_ref::<u32>().is_none());
        }
    }

    #[test]
    fn an_arc_and_its_value_are_never_each_other() {
        let value = Arc::new(String::from("row"));
        // A site caching `Arc<String>`: inline, the `Arc` itself.
        let as_arc = Stored::of(&Arc::new(Arc::clone(&value)));
        assert_eq!(as_arc.kind.way, Way::Inline);
        assert!(Arc::ptr_eq(
            as_arc.downcast_ref::<Arc<String>>().expect("its type"),
            &value
        ));
        assert!(as_arc.downcast_ref::<String>().is_none());
        // A site caching `String`, its fill's `Arc` shared: boxed.
        let as_string = Stored::shared(Arc::clone(&value));
        assert_eq!(as_string.downcast_ref::<String>(), Some(&*value));
        assert!(as_string.downcast_ref::<Arc<String>>().is_none());
        assert_eq!(Arc::strong_count(&value), 3);
        drop((as_arc, as_string));
        assert_eq!(Arc::strong_count(&value), 1);
    }

    #[test]
    fn an_any_value_cached_as_a_value_is_itself_not_what_it_holds() {
        // A site whose value type is `AnyValue` (it is `Clone + Send + Sync + 'static`).
        let inner: AnyValue = Arc::new(5u32);
        let [of, shared, erased] = every_way(&inner);
        for stored in [&of, &shared, &erased] {
            let held = stored.downcast_ref::<AnyValue>().expect("its type");
            assert!(Arc::ptr_eq(held, &inner));
            assert!(stored.downcast_ref::<u32>().is_none(), "not what it holds");
        }
        // An erased fill of the value itself is the value.
        let bare = Stored::from(Arc::clone(&inner));
        assert_eq!(bare.downcast_ref::<u32>(), Some(&5));
        assert!(bare.downcast_ref::<AnyValue>().is_none());
        assert_eq!(Arc::strong_count(&inner), 5);
        drop((of, shared, erased, bare));
        assert_eq!(Arc::strong_count(&inner), 1);
    }

    #[test]
    fn every_way_drops_its_value_once() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        #[derive(Clone)]
        struct Counted<const N: usize>(#[allow(dead_code)] [u8; N]);
        impl<const N: usize> Drop for Counted<N> {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn check<const N: usize>(way: Way) {
            DROPS.store(0, Ordering::SeqCst);
            let value = Arc::new(Counted([1; N]));
            let of = Stored::of(&value);
            assert_eq!(of.kind.way, way);
            let shared = Stored::shared(Arc::clone(&value));
            let erased = Stored::from(Arc::clone(&value) as AnyValue);
            let inline_clones = usize::from(way == Way::Inline);
            assert_eq!(Arc::strong_count(&value), 3 + 1 - inline_clones);
            drop(of);
            assert_eq!(DROPS.load(Ordering::SeqCst), inline_clones);
            drop((shared, erased));
            assert_eq!(Arc::strong_count(&value), 1);
            assert_eq!(DROPS.load(Ordering::SeqCst), inline_clones);
            drop(value);
            assert_eq!(DROPS.load(Ordering::SeqCst), inline_clones + 1);
        }
        check::<0>(Way::Inline);
        check::<8>(Way::Inline);
        check::<9>(Way::Boxed);
    }

    #[test]
    fn a_clone_that_panics_leaves_nothing_to_drop() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Fragile(#[allow(dead_code)] u32);
        impl Clone for Fragile {
            fn clone(&self) -> Self {
                panic!("clone fails");
            }
        }
        impl Drop for Fragile {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }
        let value = Arc::new(Fragile(1));
        let filled = std::panic::catch_unwind(|| Stored::of(&value));
        assert!(filled.is_err());
        assert_eq!(
            DROPS.load(Ordering::SeqCst),
            0,
            "no half-built value dropped"
        );
        assert_eq!(Arc::strong_count(&value), 1);
        // Not `Clone`-able in practice: `shared` takes the `Arc` without cloning the value.
        let stored = Stored::shared(Arc::clone(&value));
        assert!(stored.downcast_ref::<Fragile>().is_some());
        drop(stored);
        drop(value);
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_read_is_shared_between_threads() {
        let stored = Arc::new(Stored::of(&Arc::new(Arc::new(String::from("row")))));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let stored = Arc::clone(&stored);
                std::thread::spawn(move || {
                    stored
                        .downcast_ref::<Arc<String>>()
                        .map(|value| Arc::clone(value).len())
                })
            })
            .collect();
        for reader in readers {
            assert_eq!(reader.join().expect("reads"), Some(3));
        }
    }

    #[test]
    fn an_inline_value_may_mutate_itself_through_its_read() {
        // `Sync` with interior mutability, and small enough to be inline: its `Clone` (which
        // a hit runs on the read) counts into the stored value itself.
        struct Tally(std::sync::atomic::AtomicU32);
        impl Clone for Tally {
            fn clone(&self) -> Self {
                self.0.fetch_add(1, Ordering::SeqCst);
                Tally(std::sync::atomic::AtomicU32::new(0))
            }
        }
        let stored = Stored::of(&Arc::new(Tally(std::sync::atomic::AtomicU32::new(0))));
        assert_eq!(stored.kind.way, Way::Inline);
        let read = stored.downcast_ref::<Tally>().expect("its type");
        drop(read.clone());
        assert_eq!(read.0.load(Ordering::SeqCst), 1);
        let any = stored.as_any().downcast_ref::<Tally>().expect("its type");
        drop(any.clone());
        assert_eq!(any.0.load(Ordering::SeqCst), 2);
    }
}

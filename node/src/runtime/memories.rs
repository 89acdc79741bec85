//! Linear memories reused from a pool: a spent instance's memory is zeroed in place and
//! handed to the next instance, so the request path never maps or unmaps memory.
//!
//! Why: mapping a fresh 8 GiB reservation per instance and unmapping it after the
//! request made the kernel the node's largest cost. Each `munmap` in a process with
//! threads on both CPUs interrupts the other CPU to flush its TLB. This is wasmtime's
//! pooling allocator, narrowed to what edge needs.
//!
//! A [`Slot`] is one reservation, as large as the compiled code assumes: the memory's
//! static bound (4 GiB) plus its offset guard. Compiled code does no bounds checks and
//! relies on everything past the memory's current length faulting. The pool's invariants:
//!
//! 1. **Ownership.** A slot's reservation is mapped by this module, is never shared, and
//!    is only touched by whoever holds the slot: the [`PooledMemory`] of one instance, or
//!    the pool's spare list.
//! 2. **Protection.** `[0, accessible)` is readable and writable, the rest of the
//!    reservation is `PROT_NONE`. While an instance uses the slot, `accessible` equals the
//!    memory's current length, so every access past it faults exactly as with wasmer's
//!    own memories.
//! 3. **Zeroed.** A spare slot reads as zeros over all of `[0, accessible)`. A memory is
//!    reset as it is given back (on the worker thread, after the answer went out): pages
//!    in the first `keep_resident` bytes that are resident are zeroed with `memset`, and
//!    every other page is handed back to the kernel (`MADV_DONTNEED`), which reads as
//!    zeros after. A page not resident in the kept part was never touched, unless the
//!    host has swap: then it may be swapped out, and it is discarded, never skipped.
//! 4. **Resident bytes.** Outside `keep_resident`, a spare slot holds no pages. A slot
//!    made smaller for its next memory hands the pages above the new length back first,
//!    so an instance never holds resident pages beyond its own length: the memory budget
//!    counts an instance at its length, and that stays exact.
//!
//! The `VMMemoryDefinition` that compiled code reads (base and length) lives in the
//! instance's `VMContext`. wasmer hands its address to [`PooledMemory::new`], and it stays
//! valid while the instance lives. It is written at creation and at each `memory.grow`,
//! never in `Drop` (the instance may be gone by then).
#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use wasmer::sys::vm::{LinearMemory, VMMemory, VMMemoryDefinition, VMSharedMemory};
use wasmer::{MemoryError, MemoryStyle, MemoryType, Pages};

/// Counters of the pool.
#[derive(Debug, Default)]
pub struct MemoryStats {
    /// Memories that got a spare slot (no mapping made).
    pub reused: AtomicU64,
    /// Slots mapped, because no spare one was left.
    pub mapped: AtomicU64,
    /// Slots unmapped, because the spare list was full.
    pub unmapped: AtomicU64,
}

/// The node's spare linear memories, shared by every module's engine.
#[derive(Debug)]
pub struct MemoryPool {
    spare: Mutex<Vec<Slot>>,
    max_spare: usize,
    keep_resident: usize,
    page: usize,
    /// Its counters.
    pub stats: MemoryStats,
}

impl MemoryPool {
    /// A pool keeping up to `max_spare` spare memories, each zeroed in place over its
    /// first `keep_resident` bytes and handed back to the kernel beyond. With
    /// `max_spare` 0 every memory is mapped and unmapped, as wasmer does.
    pub fn new(max_spare: usize, keep_resident: usize) -> Arc<MemoryPool> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        Arc::new(MemoryPool {
            spare: Mutex::new(Vec::with_capacity(max_spare)),
            max_spare,
            keep_resident: keep_resident.next_multiple_of(page),
            page,
            stats: MemoryStats::default(),
        })
    }

    /// Spare memories now.
    pub fn spare(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot of `reservation` bytes, spare or newly mapped.
    fn take(&self, reservation: usize) -> Result<Slot, MemoryError> {
        let spare = {
            let mut spare = self.lock();
            let found = spare.iter().rposition(|s| s.reservation == reservation);
            found.map(|i| spare.swap_remove(i))
        };
        match spare {
            Some(slot) => {
                self.stats.reused.fetch_add(1, Ordering::Relaxed);
                Ok(slot)
            }
            None => {
                self.stats.mapped.fetch_add(1, Ordering::Relaxed);
                Slot::map(reservation)
            }
        }
    }

    /// Takes back `slot`, which held a memory whose first `initial` bytes were its
    /// starting size: reset (invariant 3) and kept, or unmapped if the list is full or
    /// the reset failed.
    fn give_back(&self, mut slot: Slot, initial: usize) {
        if self.max_spare == 0 || self.lock().len() >= self.max_spare {
            self.stats.unmapped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Err(error) = slot.reset(initial.min(self.keep_resident), self.page) {
            tracing::warn!(%error, "resetting a spare memory failed: unmapped instead");
            self.stats.unmapped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut spare = self.lock();
        if spare.len() < self.max_spare {
            spare.push(slot);
        } else {
            self.stats.unmapped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A memory of type `ty` (its maximum already narrowed to the node's limit) in the
    /// `Static` style, its definition at `definition`.
    ///
    /// # Safety
    /// `definition` points to the `VMMemoryDefinition` of the instance this memory is
    /// made for, and stays valid while the instance lives (wasmer's contract for
    /// `Tunables::create_vm_memory`).
    pub unsafe fn memory(
        self: &Arc<Self>,
        ty: &MemoryType,
        definition: NonNull<VMMemoryDefinition>,
    ) -> Result<VMMemory, MemoryError> {
        let bound = MemoryStyle::static_bound();
        if ty.minimum > bound || ty.maximum.is_some_and(|m| m < ty.minimum) || ty.shared {
            return Err(MemoryError::InvalidMemory {
                reason: format!("a pooled memory cannot be {ty:?}"),
            });
        }
        let guard = usize::try_from(MemoryStyle::Static.offset_guard_size())
            .map_err(|e| MemoryError::Generic(e.to_string()))?;
        let reservation = bound.bytes().0 + guard;
        let mut slot = self.take(reservation)?;
        let initial = ty.minimum.bytes().0;
        if let Err(error) = slot.set_accessible(initial) {
            self.give_back(slot, 0);
            return Err(error);
        }
        let memory = PooledMemory {
            slot: Some(slot),
            pool: Arc::clone(self),
            definition,
            ty: *ty,
            initial,
        };
        memory.publish();
        Ok(VMMemory::from_custom(
            Box::new(memory) as Box<dyn LinearMemory + Send + Sync>
        ))
    }
}

/// One reservation (invariant 1).
#[derive(Debug)]
struct Slot {
    base: NonNull<u8>,
    reservation: usize,
    accessible: usize,
}

// SAFETY: a slot is plain memory that only its one holder touches (invariant 1); moving
// that holder between threads moves nothing else.
unsafe impl Send for Slot {}

impl Slot {
    /// Maps a new reservation, all of it `PROT_NONE`.
    fn map(reservation: usize) -> Result<Slot, MemoryError> {
        // SAFETY: a new private anonymous mapping at an address the kernel picks aliases
        // nothing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reservation,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(MemoryError::Region(format!(
                "mapping a {reservation}-byte memory reservation: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Slot {
            base: NonNull::new(base.cast()).expect("mmap succeeded"),
            reservation,
            accessible: 0,
        })
    }

    /// Makes `[0, len)` accessible and the rest not (invariant 2), handing back pages
    /// above `len` first (invariant 4). `len` is a multiple of the wasm page.
    fn set_accessible(&mut self, len: usize) -> Result<(), MemoryError> {
        if len > self.accessible {
            self.protect(self.accessible, len - self.accessible, true)?;
        } else if len < self.accessible {
            self.discard(len, self.accessible - len)?;
            self.protect(len, self.accessible - len, false)?;
        }
        self.accessible = len;
        Ok(())
    }

    /// Changes the protection of `[start, start + len)`, inside the reservation.
    fn protect(&self, start: usize, len: usize, writable: bool) -> Result<(), MemoryError> {
        debug_assert!(start + len <= self.reservation);
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_NONE
        };
        // SAFETY: the range is inside this slot's own reservation (invariant 1).
        let done = unsafe { libc::mprotect(self.base.as_ptr().add(start).cast(), len, prot) };
        if done != 0 {
            return Err(MemoryError::Region(format!(
                "mprotect of a pooled memory: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Hands `[start, start + len)` back to the kernel: it reads as zeros after.
    fn discard(&self, start: usize, len: usize) -> Result<(), MemoryError> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the range is inside this slot's own reservation (invariant 1), and no
        // one reads it while the holder resets it.
        let done = unsafe {
            libc::madvise(
                self.base.as_ptr().add(start).cast(),
                len,
                libc::MADV_DONTNEED,
            )
        };
        if done != 0 {
            return Err(MemoryError::Region(format!(
                "madvise of a pooled memory: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Zeroes `[0, accessible)` (invariant 3): resident pages of `[0, keep)` in place,
    /// everything else by handing it back.
    fn reset(&mut self, keep: usize, page: usize) -> Result<(), MemoryError> {
        let keep = keep.min(self.accessible);
        let pages = keep / page;
        let mut resident = vec![0u8; pages];
        if pages > 0 {
            // SAFETY: `[0, keep)` is inside the accessible part of this slot's own
            // mapping, and `resident` has one byte per page of it.
            let done =
                unsafe { libc::mincore(self.base.as_ptr().cast(), keep, resident.as_mut_ptr()) };
            if done != 0 {
                return Err(MemoryError::Region(format!(
                    "mincore of a pooled memory: {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
        // A page that is not resident was never touched, or it was swapped out. Without
        // swap it reads as zeros already; with swap it is discarded, never skipped.
        let swap = swap_configured();
        let mut run_start = 0;
        while run_start < pages {
            let in_core = resident[run_start] & 1 == 1;
            let run_end = (run_start..pages)
                .find(|&p| (resident[p] & 1 == 1) != in_core)
                .unwrap_or(pages);
            let (start, len) = (run_start * page, (run_end - run_start) * page);
            if in_core {
                // SAFETY: inside the accessible part of this slot's own mapping, which no
                // instance uses any more.
                unsafe { std::ptr::write_bytes(self.base.as_ptr().add(start), 0, len) };
            } else if swap {
                self.discard(start, len)?;
            }
            run_start = run_end;
        }
        self.discard(keep, self.accessible - keep)
    }
}

/// Whether the host has swap now (`sysinfo`), so that a page not resident may still hold
/// data.
fn swap_configured() -> bool {
    // SAFETY: `sysinfo` writes one `struct sysinfo`, which `info` is.
    unsafe {
        let mut info: libc::sysinfo = std::mem::zeroed();
        libc::sysinfo(&mut info) != 0 || info.totalswap > 0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: the reservation is this slot's own (invariant 1) and nothing refers to
        // it any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.reservation) };
    }
}

/// One instance's linear memory in a pooled slot.
#[derive(Debug)]
struct PooledMemory {
    /// Always `Some` until dropped.
    slot: Option<Slot>,
    pool: Arc<MemoryPool>,
    definition: NonNull<VMMemoryDefinition>,
    ty: MemoryType,
    initial: usize,
}

// SAFETY: the definition pointer is only written by the thread that runs the instance
// (wasmer's stores do not change threads while they run), and the slot is this memory's
// alone.
unsafe impl Send for PooledMemory {}
// SAFETY: as above; `&self` methods only read the definition.
unsafe impl Sync for PooledMemory {}

impl PooledMemory {
    fn slot(&self) -> &Slot {
        self.slot.as_ref().expect("a pooled memory holds its slot")
    }

    /// Writes base and length into the instance's definition.
    fn publish(&self) {
        let slot = self.slot();
        // SAFETY: `definition` is valid while the instance lives (the contract of
        // `MemoryPool::memory`), and the instance calls this only while it runs.
        unsafe {
            let definition = self.definition.as_ptr();
            (*definition).base = slot.base.as_ptr();
            (*definition).current_length = slot.accessible;
        }
    }
}

impl LinearMemory for PooledMemory {
    fn ty(&self) -> MemoryType {
        let mut ty = self.ty;
        ty.minimum = self.size();
        ty
    }

    fn size(&self) -> Pages {
        Pages(u32::try_from(self.slot().accessible / wasmer::WASM_PAGE_SIZE).unwrap_or(u32::MAX))
    }

    fn style(&self) -> MemoryStyle {
        MemoryStyle::Static
    }

    fn grow(&mut self, delta: Pages) -> Result<Pages, MemoryError> {
        let current = self.size();
        if delta.0 == 0 {
            return Ok(current);
        }
        let refused = MemoryError::CouldNotGrow {
            current,
            attempted_delta: delta,
        };
        let Some(new) = current.checked_add(delta) else {
            return Err(refused);
        };
        let maximum = self
            .ty
            .maximum
            .unwrap_or(MemoryStyle::static_bound())
            .min(MemoryStyle::static_bound());
        if new > maximum {
            return Err(refused);
        }
        let slot = self.slot.as_mut().expect("a pooled memory holds its slot");
        slot.set_accessible(new.bytes().0)?;
        self.publish();
        Ok(current)
    }

    fn vmmemory(&self) -> NonNull<VMMemoryDefinition> {
        self.definition
    }

    fn try_clone(&self) -> Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        Err(MemoryError::UnsupportedOperation {
            message: "a pooled memory is not cloned".into(),
        })
    }

    fn copy(&self) -> Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        Err(MemoryError::UnsupportedOperation {
            message: "a pooled memory is not copied".into(),
        })
    }

    fn as_shared(&self) -> Result<VMSharedMemory, MemoryError> {
        Err(MemoryError::MemoryNotShared)
    }
}

impl Drop for PooledMemory {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.pool.give_back(slot, self.initial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// Which pages of `[0, len)` of `slot` are resident.
    fn resident(slot: &Slot, len: usize, page: usize) -> Vec<bool> {
        let mut pages = vec![0u8; len / page];
        // SAFETY: inside the slot's reservation; one byte per page.
        let done = unsafe { libc::mincore(slot.base.as_ptr().cast(), len, pages.as_mut_ptr()) };
        assert_eq!(done, 0, "{}", std::io::Error::last_os_error());
        pages.into_iter().map(|p| p & 1 == 1).collect()
    }

    /// `[0, len)` of `slot`, which must be accessible.
    fn bytes(slot: &mut Slot, len: usize) -> &mut [u8] {
        assert!(len <= slot.accessible);
        // SAFETY: accessible (checked) and this test's alone.
        unsafe { std::slice::from_raw_parts_mut(slot.base.as_ptr(), len) }
    }

    #[test]
    fn a_reset_zeroes_every_byte_and_keeps_only_the_first_pages_resident() {
        let pool = MemoryPool::new(1, MIB);
        let mut slot = Slot::map(64 * MIB).unwrap();
        slot.set_accessible(4 * MIB).unwrap();
        bytes(&mut slot, 4 * MIB).fill(0xAB);
        // A hole the guest never touched, inside the kept part.
        // SAFETY: inside the accessible part.
        unsafe {
            libc::madvise(
                slot.base.as_ptr().add(MIB / 2).cast(),
                64 << 10,
                libc::MADV_DONTNEED,
            )
        };
        slot.reset(pool.keep_resident, pool.page).unwrap();

        let pages = resident(&slot, 4 * MIB, pool.page);
        let kept = MIB / pool.page;
        assert!(
            pages[kept..].iter().all(|r| !r),
            "pages beyond keep_resident stayed resident"
        );
        let touched = pages[..kept].iter().filter(|r| **r).count();
        assert!(
            touched >= kept - (64 << 10) / pool.page,
            "kept pages were handed back: {touched} of {kept} resident"
        );
        assert!(
            bytes(&mut slot, 4 * MIB).iter().all(|b| *b == 0),
            "a byte survived the reset"
        );
    }

    #[test]
    fn a_smaller_next_memory_holds_no_pages_above_its_length_and_reads_zeros_when_grown() {
        let pool = MemoryPool::new(1, 8 * MIB);
        let mut slot = Slot::map(64 * MIB).unwrap();
        slot.set_accessible(4 * MIB).unwrap();
        bytes(&mut slot, 4 * MIB).fill(0xCD);
        slot.set_accessible(MIB).unwrap();
        assert!(
            resident(&slot, 4 * MIB, pool.page)[MIB / pool.page..]
                .iter()
                .all(|r| !r),
            "pages above the new length stayed resident"
        );
        slot.set_accessible(4 * MIB).unwrap();
        assert!(bytes(&mut slot, 4 * MIB)[MIB..].iter().all(|b| *b == 0));
    }

    #[test]
    fn spare_memories_are_reused_up_to_the_limit_and_the_rest_unmapped() {
        let pool = MemoryPool::new(2, MIB);
        let slots: Vec<_> = (0..3).map(|_| pool.take(64 * MIB).unwrap()).collect();
        for slot in slots {
            pool.give_back(slot, MIB);
        }
        assert_eq!(pool.spare(), 2);
        assert_eq!(pool.stats.unmapped.load(Ordering::Relaxed), 1);
        let again = pool.take(64 * MIB).unwrap();
        assert_eq!(pool.stats.reused.load(Ordering::Relaxed), 1);
        assert_eq!(pool.stats.mapped.load(Ordering::Relaxed), 3);
        // A reservation of another size is never handed out for this one.
        drop(pool.take(32 * MIB).unwrap());
        assert_eq!(pool.stats.mapped.load(Ordering::Relaxed), 4);
        drop(again);
    }
}
